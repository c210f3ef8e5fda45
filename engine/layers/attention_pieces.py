"""Attention of one sequence's queries over disjoint pieces of its keys, merged by their log-sum-exp.

Each piece is one flash-attention call that also returns its log-sum-exp; merging the pieces gives the softmax
attention over their union exactly. This is how a window attends to [sinks | retrieved blocks | local keys]
(engine.kv.retrieval_attention) and how a prefill chunk attends to [cached context | itself, causal] without a
[chunk, context] mask (engine.layers.attention).
"""
import torch

EXP_FLOOR = -87.0   # exp(-87) ≈ 1.6e-38 is still a normal float32


def flash_piece(q, keys, values, scale: float, causal: bool = False, mask: torch.Tensor | None = None,
                keep_scores: bool = False):
    """q [1, H, w, D] over head-major keys/values [Hkv, S, D] -> (output [1, H, w, D], log-sum-exp [1, H, w], and
    with `keep_scores` the scaled scores [1, Hkv, g·w, S] before any mask (non-causal or w = 1 only), else None).
    `causal` (S = w) lets query i see keys 0..i; `mask` ([S] or [Hkv, S], non-causal only) marks the keys to
    attend."""
    _, heads, w, dim = q.shape
    kv_heads = keys.shape[0]
    group = heads // kv_heads
    keys, values = keys[None], values[None]                                         # [1, Hkv, S, D]
    if not causal or w == 1:   # a KV head's query heads become extra query rows: no repeated keys
        q = q.reshape(1, kv_heads, group * w, dim)
    else:
        keys, values = keys.repeat_interleave(group, dim=1), values.repeat_interleave(group, dim=1)
    if q.device.type == "cpu" and mask is None:   # scores, if kept, by one more product: ~2x cheaper than below
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, keys, values, 0.0, causal,
                                                                              scale=scale)[:2]
        scores = q @ keys.transpose(-1, -2) * scale if keep_scores else None
    else:
        scores = q @ keys.transpose(-1, -2) * scale
        hidden = None
        if causal:
            hidden = torch.ones_like(scores, dtype=torch.bool).triu(1)
        if mask is not None:
            per_head = mask if mask.dim() == 2 else mask[None]                        # [Hkv or 1, S]
            hidden = ~per_head[None, :, None, :] if hidden is None else hidden | ~per_head[None, :, None, :]
        probs, lse = softmax_with_lse(scores, hidden)
        out = probs @ values
    return out.reshape(1, heads, w, dim), lse.reshape(1, heads, w), scores if keep_scores else None


def merge_pieces(pieces, with_lse: bool = True):
    """Attention over disjoint key sets, as (output [1, H, w, D], log-sum-exp [1, H, w]) pairs -> the attention over
    their union, folded in one piece at a time: a piece's share of the mass so far is sigmoid(its lse − the lse so
    far). The union's log-sum-exp too, or None without `with_lse`."""
    out, lse = pieces[0]
    for merged, (piece, piece_lse) in enumerate(pieces[1:], start=2):   # pieces merged once this one is
        out = torch.lerp(out, piece, torch.sigmoid(piece_lse - lse)[..., None])
        if with_lse or merged < len(pieces):
            lse = torch.logaddexp(lse, piece_lse)
    return out, lse if with_lse else None


def softmax_with_lse(scores: torch.Tensor, hidden: torch.Tensor | None = None):
    """softmax over the last dimension and its log-sum-exp, with the `hidden` scores excluded (a row with every
    score hidden gets probabilities 0 and log-sum-exp -inf, which merge_pieces ignores). exp's argument is floored
    at EXP_FLOOR: below it the result would be denormal, and torch's CPU exp takes a ~15× slower path there. A
    floored term weighs under 2e-38."""
    if hidden is not None:
        scores = scores.masked_fill(hidden, float("-inf"))
    top = scores.amax(-1, keepdim=True)
    top = top.masked_fill(top == float("-inf"), 0.0)
    total = (scores - top).clamp_(min=EXP_FLOOR).exp_()
    if hidden is not None:
        total.masked_fill_(hidden, 0.0)
    lse = top + total.sum(-1, keepdim=True).log()
    probs = (scores - lse).clamp_(min=EXP_FLOOR).exp_()   # not exp / sum: that would be denormal again
    if hidden is not None:
        probs.masked_fill_(hidden, 0.0)
    return probs, lse.squeeze(-1)
