"""Block summaries: what the selection policies score a block by.

- `received_attention` (one per KV pool): per cached token and KV head, the attention it has received from
  local-window queries so far.
- `SequenceSummaries` (one per request), per layer and logical block, appended as blocks leave the local window:
  - `repr`: the representative keys (pre-RoPE), R per block and KV head: the block is cut into `repr_count` (R)
    runs of tokens, and each run's representative is, per KV head, the mean of its `repr_topk` keys that received the
    most attention while they were in the local window (InfLLM; R = 1: one per block); `repr_unit`: the same scaled to
    unit norm (ActQKV, which scores by cosine; see `unit_representatives`). A block scores as its best
    representative;
  - `kmin`, `kmax` [blocks, Hkv, D]: channel-wise min and max of the block's keys as cached (Quest).
  A request keeps only those its policy reads (`POLICY_SUMMARIES`). Kept in logical order, a step reads its candidate
  blocks as one slice rather than gathering them by physical id. The representatives are kept feature-major,
  [Hkv, D, blocks, R] (`FEATURE_MAJOR`): the scores are then one product over a column-major matrix, which the CPU's
  BLAS runs ~2x faster than over the same matrix row-major (demo shape, 32k: ~330 against ~570 µs a layer).
"""
import torch

from engine.layers.rotary import RotaryEmbedding, unrotate_range

FEATURE_MAJOR = ("repr", "repr_unit")   # stored [Hkv, D, blocks, R]; the others [blocks, ...]
POLICY_SUMMARIES = {"full": (), "streaming": (), "quest": ("kmin", "kmax"), "infllm": ("repr",),
                    "actqkv": ("repr_unit",)}


def received_attention(num_layers: int, num_slots: int, kv_heads: int, device: torch.device) -> list[torch.Tensor]:
    """Per layer, the attention each cached token (pool slot) has received per KV head: [num_slots, Hkv]."""
    return [torch.zeros(num_slots, kv_heads, device=device) for _ in range(num_layers)]


def unit_representatives(reprs: torch.Tensor, per_head: bool) -> torch.Tensor:
    """Representatives [..., Hkv, D] scaled to unit norm: per KV head with `per_head`, else over the heads
    concatenated (a zero representative stays zero)."""
    dims = -1 if per_head else (-2, -1)
    return reprs / torch.linalg.vector_norm(reprs, dim=dims, keepdim=True).clamp(min=1e-8)


class SequenceSummaries:
    def __init__(self, num_layers: int):
        self.length = [0] * num_layers
        self.fields: list[dict[str, torch.Tensor]] = [{} for _ in range(num_layers)]   # name -> buffer

    def get(self, name: str, layer: int, first: int, last: int) -> torch.Tensor:
        """Summary `name` of logical blocks first..last-1 of `layer` (a view; [Hkv, D, nb, R] for FEATURE_MAJOR)."""
        if name in FEATURE_MAJOR:
            return self.fields[layer][name][:, :, first:last]
        return self.fields[layer][name][first:last]

    def summarize(self, layer: int, keys: torch.Tensor, first_position: int, received: torch.Tensor | None,
                  rotary: RotaryEmbedding, repr_topk: int, repr_count: int, per_head: bool = False,
                  names: tuple[str, ...] = ("repr", "repr_unit", "kmin", "kmax")):
        """Append the summaries `names` of the next blocks of `layer`: their cached (post-RoPE) keys
        [nb, bs, Hkv, D], the attention their tokens received [nb, bs, Hkv] (None: not recorded, where each run's
        keys are all averaged), their first token's position.
        `per_head`: the unit representatives are normalised per KV head (ActQKV's per-head selection)."""
        values = {}
        if {"repr", "repr_unit"} & set(names):
            nb, bs, kv_heads, dim = keys.shape
            run = bs // repr_count
            pre = unrotate_range(keys.flatten(0, 1).float(), first_position, rotary)
            pre = pre.view(nb, repr_count, run, kv_heads, dim)
            if received is None:   # every key of a run is averaged (KVConfig.needs_received)
                reprs = pre.mean(2)                                                                       # [nb,R,Hkv,D]
            else:
                attended = received.view(nb, repr_count, run, kv_heads)
                top = attended.topk(min(repr_topk, run), dim=2).indices                                  # [nb,R,r,Hkv]
                reprs = pre.gather(2, top[..., None].expand(-1, -1, -1, -1, dim)).mean(2)
            values["repr"], values["repr_unit"] = reprs, unit_representatives(reprs, per_head)
        if {"kmin", "kmax"} & set(names):
            values["kmin"], values["kmax"] = keys.float().amin(1), keys.float().amax(1)
        self._append(layer, keys.shape[0], **{name: values[name] for name in names})

    def _append(self, layer: int, count: int, **values: torch.Tensor):
        start = self.length[layer]
        end = start + count
        store = self.fields[layer]
        for name, value in values.items():
            if name in FEATURE_MAJOR:   # [count, R, Hkv, D] -> [Hkv, D, count, R]: blocks along dim 2
                value = value.permute(2, 3, 0, 1)
            axis = 2 if name in FEATURE_MAJOR else 0
            buffer = store.get(name)
            if buffer is None or buffer.shape[axis] < end:   # grow geometrically
                shape = list(value.shape)
                shape[axis] = max(end, 64, 2 * start)
                grown = value.new_empty(shape)
                if buffer is not None:
                    grown.narrow(axis, 0, start).copy_(buffer.narrow(axis, 0, start))
                store[name] = buffer = grown
            buffer.narrow(axis, start, count).copy_(value)
        self.length[layer] = end
