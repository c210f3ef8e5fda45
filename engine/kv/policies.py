"""Block scoring for the selection policies. Every policy keeps the sinks and the local window; these functions
score the candidate blocks in between, one score per block shared by the heads (or per KV head for ActQKV).
Scores are computed in fp32, whatever the model's dtype (the summaries and the probe statistics are fp32)."""
import torch

from engine.kv import actqkv
from engine.kv.config import KVConfig
from engine.kv.state import SequenceKVState

STATIC_SELECTION = False   # tests: keep the device path's static top-(2k) and count tensor on the CPU too


def infllm_scores(q_global: torch.Tensor, reprs: torch.Tensor) -> torch.Tensor:
    """Probe = mean query of the window; score = max over a block's representatives of Σ_heads probe_h · repr_{kv(h)}.
    q [w, H, D], reprs [Hkv, D, N, R] (feature-major, engine.kv.summaries)."""
    probe = q_global.float().mean(0)
    kv_heads = reprs.shape[0]
    return _summed_dots(probe.view(kv_heads, -1, probe.shape[-1]).sum(1), reprs).amax(1)


def quest_scores(q: torch.Tensor, kmin: torch.Tensor, kmax: torch.Tensor) -> torch.Tensor:
    """Upper bound of q·k over each block: Σ_channels max(q_c·min_c, q_c·max_c), summed over heads."""
    probe = q.float().mean(0)
    kv_heads = kmin.shape[1]
    probe = probe.view(kv_heads, -1, probe.shape[-1]).unsqueeze(0)          # [1, Hkv, g, D]
    bound = torch.maximum(probe * kmin.unsqueeze(2), probe * kmax.unsqueeze(2))
    return bound.sum(dim=(1, 2, 3))


def actqkv_scores(q_global: torch.Tensor, units: torch.Tensor, state: SequenceKVState, layer: int,
                  prefilling: bool = False) -> torch.Tensor:
    """Cosine between the activation-bias-weighted probe and each block's best representative (heads concatenated;
    `units` [Hkv, D, N, R]: the representatives at unit norm, engine.kv.summaries.unit_representatives); with
    `per_head`, one column of scores per KV head: [N, Hkv]. Plus the question term while prefilling."""
    w, heads, dim = q_global.shape
    kv_heads = units.shape[0]
    group = heads // kv_heads
    if prefilling or w > 1:
        weights = actqkv.probe_weights(q_global.reshape(w, -1), state.stats[layer], state.config.warmup)
        probe = (weights[:, None, None] * q_global.float()).sum(0).view(kv_heads, group, dim)
    else:   # a decode query is its own probe; no window of several queries follows it, so no statistics either
        probe = q_global[0].float().view(kv_heads, group, dim)
    scores = _cosine(probe, units, state.config.per_head)
    if state.question is not None and prefilling and state.config.question_weight > 0:   # as in ActQKV
        scores = scores + state.config.question_weight * _cosine(
            state.question[layer].view(kv_heads, group, dim), units, state.config.per_head)
    return scores


def _cosine(probe: torch.Tensor, units: torch.Tensor, per_head: bool) -> torch.Tensor:
    """Cosine between probe [Hkv, g, D] (heads concatenated) and each unit representative ([Hkv, D, N, R]) repeated
    over its query-head group, without materialising the repeat: <probe, rep(u)> = Σ_kv <Σ_g probe_kv,g, u_kv> and
    |rep(u)| = √g. The best of a block's R. One score per block [N], or per KV head [N, Hkv]."""
    probe = probe.float()
    scale = probe.shape[1] ** 0.5
    summed = probe.sum(1)                                                        # [Hkv, D]
    if per_head:   # one batched product: head k's probe against head k's representatives
        heads = summed / (probe.pow(2).sum(dim=(1, 2)).sqrt()[:, None] * scale).clamp(min=1e-8)
        kv_heads, dim, n, r = units.shape
        return torch.bmm(heads[:, None], units.reshape(kv_heads, dim, n * r)).view(kv_heads, n, r).amax(-1).T
    return _summed_dots(summed, units).amax(1) / (probe.norm() * scale).clamp(min=1e-8)


def _summed_dots(probe: torch.Tensor, reprs: torch.Tensor) -> torch.Tensor:
    """Σ_kv <probe_kv, r_kv> for probe [Hkv, D] and each representative of reprs [Hkv, D, N, R]: [N, R]. One
    matrix-vector product with the representatives as the columns of a [Hkv·D, N·R] matrix."""
    kv_heads, dim, n, r = reprs.shape
    return torch.mv(reprs.reshape(kv_heads * dim, n * r).t(), probe.flatten()).view(n, r)


def choose_blocks(scores: torch.Tensor, config: KVConfig, state: SequenceKVState, layer: int,
                  mean_k: int) -> tuple[torch.Tensor, torch.Tensor | int]:
    """The blocks to attend, as (indices into the candidates in descending score order, count): the first `count`
    indices are chosen. With ActQKV's dynamic cut-off, count is a 0-dim device tensor and the indices are a static
    top-(2·mean_k), so the step needs no host sync (on the CPU the entropy cut-off's count is an int: a sync is free
    there); otherwise count is mean_k. Per-head scores [N, Hkv] give indices [K, Hkv]."""
    n = scores.shape[0]
    if config.policy != "actqkv":
        return scores.topk(min(mean_k, n), dim=0).indices, min(mean_k, n)
    flat = scores if scores.dim() == 1 else scores.mean(-1)
    density = actqkv.normalized_entropy(flat, config.tau)
    if config.cutoff == "entropy":
        host = scores.device.type == "cpu" and not STATIC_SELECTION
        k = actqkv.allocate_blocks(state.density, layer, mean_k, host)
    else:
        k = actqkv.top_p_blocks(flat, config.tau, config.top_p, mean_k)
    state.density[layer].lerp_(density, 0.1)   # 0.9 · itself + 0.1 · density, in one op
    return scores.topk(min(2 * mean_k, n), dim=0).indices, min(k, n) if isinstance(k, int) else k.clamp(max=n)
