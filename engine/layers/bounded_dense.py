"""Dense causal attention with `bounded` positions, for training the demo model to read retrieved blocks.

At decode with every block retrieved, the engine's retrieval attention (`kv_positions="bounded"`, engine.kv) lets
a query at position i attend
  - the keys from its local boundary on (the block boundary at or below i + 1 − local) at their true positions;
  - every earlier key, sinks included, as if it sat `local` tokens back: one relative angle for all of them.
Near the start, where the boundary does not pass the sink blocks, every key keeps its true position.
This module computes the same for every query of a training batch, with the score matrix materialised (training
lengths are a few thousand tokens). A model trained on it sees retrieved keys the way bounded retrieval shows them,
in no order that positions could tell.
"""
import torch

from engine.layers.rotary import apply_rotary


def near_boundaries(length: int, local: int, block_size: int, sink_tokens: int, device=None) -> torch.Tensor:
    """Per query position, the first key position attended at its true position ([length]; 0: all of them)."""
    boundary = torch.div(torch.arange(length, device=device) + 1 - local, block_size, rounding_mode="floor")
    boundary = boundary * block_size
    return torch.where(boundary <= sink_tokens, 0, boundary)


def bounded_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos_sin, local: int,
                             block_size: int, sink_tokens: int, scale: float) -> torch.Tensor:
    """q [B, T, H, D], k/v [B, T, Hkv, D] before RoPE; `cos_sin` for positions 0..T-1 ([T, 1, D/2] each)
    -> [B, T, H, D]."""
    b, t, heads, _ = q.shape
    group = heads // k.shape[2]
    k_true = apply_rotary(k, cos_sin).repeat_interleave(group, dim=2)
    q_true = apply_rotary(q, cos_sin)
    q_far = apply_rotary(q, tuple(c[local:local + 1] for c in cos_sin)) if t > local else q_true
    near_scores = torch.einsum("bqhd,bkhd->bhqk", q_true, k_true)
    far_scores = torch.einsum("bqhd,bkhd->bhqk", q_far, k.repeat_interleave(group, dim=2))
    keys = torch.arange(t, device=q.device)
    near = keys[None, :] >= near_boundaries(t, local, block_size, sink_tokens, q.device)[:, None]
    causal = keys[None, :] <= keys[:, None]
    scores = torch.where(near, near_scores, far_scores).masked_fill(~causal, float("-inf")) * scale
    weights = torch.softmax(scores.float(), dim=-1).to(v.dtype)
    return torch.einsum("bhqk,bkhd->bqhd", weights, v.repeat_interleave(group, dim=2))
