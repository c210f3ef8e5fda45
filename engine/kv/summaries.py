"""Block summaries: what the selection policies score a block by.

- `received_attention` (one per KV pool): per cached token and KV head, the attention it has received from
  local-window queries so far.
- `SequenceSummaries` (one per request), per layer and logical block, appended as blocks leave the local window:
  - `repr` [blocks, R, Hkv, D]: the representative keys (pre-RoPE): the block is cut into `repr_count` (R) runs of
    tokens, and each run's representative is, per KV head, the mean of its `repr_topk` keys that received the most
    attention while they were in the local window (InfLLM / ActQKV; R = 1: one per block); `repr_sq`: their
    squared norms [blocks, R, Hkv]. A block scores as its best representative;
  - `kmin`, `kmax`: channel-wise min and max of the block's keys as cached (Quest).
  Kept in logical order, a step reads its candidate blocks as one slice rather than gathering them by physical id.
"""
import torch

from engine.layers.rotary import RotaryEmbedding, unrotate_range


def received_attention(num_layers: int, num_slots: int, kv_heads: int, device: torch.device) -> list[torch.Tensor]:
    """Per layer, the attention each cached token (pool slot) has received per KV head: [num_slots, Hkv]."""
    return [torch.zeros(num_slots, kv_heads, device=device) for _ in range(num_layers)]


class SequenceSummaries:
    def __init__(self, num_layers: int):
        self.length = [0] * num_layers
        self.fields: list[dict[str, torch.Tensor]] = [{} for _ in range(num_layers)]   # name -> [capacity, ...]

    def get(self, name: str, layer: int, first: int, last: int) -> torch.Tensor:
        """Summary `name` of logical blocks first..last-1 of `layer` (a view)."""
        return self.fields[layer][name][first:last]

    def summarize(self, layer: int, keys: torch.Tensor, first_position: int, received: torch.Tensor,
                  rotary: RotaryEmbedding, repr_topk: int, repr_count: int):
        """Append the summaries of the next blocks of `layer`: their cached (post-RoPE) keys [nb, bs, Hkv, D], the
        attention their tokens received [nb, bs, Hkv], their first token's position."""
        nb, bs, kv_heads, dim = keys.shape
        run = bs // repr_count
        pre = unrotate_range(keys.flatten(0, 1).float(), first_position, rotary)
        pre = pre.view(nb, repr_count, run, kv_heads, dim)
        top = received.view(nb, repr_count, run, kv_heads).topk(min(repr_topk, run), dim=2).indices   # [nb, R, r, Hkv]
        reprs = pre.gather(2, top[..., None].expand(-1, -1, -1, -1, dim)).mean(2)                      # [nb, R, Hkv, D]
        self._append(layer, repr=reprs, repr_sq=reprs.pow(2).sum(-1), kmin=keys.float().amin(1),
                     kmax=keys.float().amax(1))

    def _append(self, layer: int, **values: torch.Tensor):
        start = self.length[layer]
        end = start + next(iter(values.values())).shape[0]
        store = self.fields[layer]
        for name, value in values.items():
            buffer = store.get(name)
            if buffer is None or buffer.shape[0] < end:   # grow geometrically
                grown = value.new_empty((max(end, 64, 2 * start), *value.shape[1:]))
                if buffer is not None:
                    grown[:start] = buffer[:start]
                store[name] = buffer = grown
            buffer[start:end] = value
        self.length[layer] = end
