"""Multi-head (GQA) attention over the paged KV cache.

A step's tokens arrive flattened: `[num_tokens, hidden]`. New keys and values are written into the cache at
`slot_mapping` (slot = block_id * block_size + offset). Prefill chunks attend per sequence; single-token decodes
are batched into one padded call.
"""
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from engine.kv.retrieval_attention import RetrievalContext, RetrievalSlice, retrieval_attention
from engine.layers.attention_pieces import flash_piece, merge_pieces
from engine.layers.bounded_dense import bounded_causal_attention
from engine.layers.context_runs import ContextRuns, context_pieces
from engine.layers.fused_linear import fuse_linears
from engine.layers.gather_buffers import GatherBuffers
from engine.layers.rotary import apply_rotary


@dataclass
class PrefillSlice:
    """One sequence's chunk of more than one query token."""
    q_start: int
    q_len: int
    ctx_start: int                   # tokens already in the cache before this chunk
    kv_slots: torch.Tensor | None    # cache slots of all ctx_start + q_len keys; None if ctx_start == 0
    mask: torch.Tensor | None        # [q_len, ctx_start + q_len] bool; None: causal, every cached key visible
    context: ContextRuns | None = None   # CPU, mask None: the cached context read in place where it is contiguous


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor       # [num_tokens]
    prefills: list[PrefillSlice]
    decode_rows: torch.Tensor        # [B] row of each decode token in the flattened batch
    decode_slots: torch.Tensor       # [B, L] cache slots of each decode's keys, padded
    decode_mask: torch.Tensor | None  # [B, 1, 1, L] bool; None when no key is padding or out of the window
    decode_in_place: list[tuple[int, ContextRuns]] = field(default_factory=list)   # (row, keys) of long decodes (CPU)
    retrieval: list[RetrievalSlice] = field(default_factory=list)   # sequences under a KV selection policy
    retrieval_context: RetrievalContext | None = None
    slot_mapping_host: list[int] | None = None   # slot_mapping on the host (KV tiers)
    kv_tiers: list | None = None                 # per layer DeviceBlockCache with --kv-offload: new KV goes there
    gather_buffers: GatherBuffers = field(default_factory=GatherBuffers)   # the runner's, reused across steps


def causal_mask(ctx_start: int, q_len: int, sliding_window: int | None) -> torch.Tensor:
    q_pos = torch.arange(ctx_start, ctx_start + q_len).unsqueeze(1)
    k_pos = torch.arange(ctx_start + q_len).unsqueeze(0)
    mask = k_pos <= q_pos
    if sliding_window is not None:
        mask &= k_pos > q_pos - sliding_window
    return mask


class Attention(torch.nn.Module):
    def __init__(self, hidden: int, heads: int, kv_heads: int, head_dim: int, qkv_bias: bool = False,
                 o_bias: bool = False):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.q_proj = torch.nn.Linear(hidden, heads * head_dim, bias=qkv_bias)
        self.k_proj = torch.nn.Linear(hidden, kv_heads * head_dim, bias=qkv_bias)
        self.v_proj = torch.nn.Linear(hidden, kv_heads * head_dim, bias=qkv_bias)
        self.o_proj = torch.nn.Linear(heads * head_dim, hidden, bias=o_bias)
        self.scale = head_dim ** -0.5
        self.layer_idx = 0  # set by the model; indexes per-layer retrieval state
        self.bounded: tuple[int, int, int] | None = None   # training: (local, block size, sink tokens), see below
        self.qkv: tuple[torch.Tensor, torch.Tensor | None] | None = None   # see fuse_projections

    def fuse_projections(self):
        """Serve the cached path with one [q; k; v] projection (weight, bias): a decode step makes one call instead
        of three. q/k/v_proj keep their weights as views of it (no extra memory) and still serve the dense path
        (training, and the forward hooks that read q_proj's output). Made by the engine once the model is loaded."""
        self.qkv = fuse_linears(self.q_proj, self.k_proj, self.v_proj)

    def forward(self, x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor], meta: AttentionMetadata | None,
                kv_cache: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """x [tokens, hidden] over the paged cache; with `meta` None, x [batch, T, hidden] with plain causal
        attention and no cache (training and reference)."""
        if meta is None:
            return self._dense_causal(x, cos_sin)
        n = x.shape[0]
        if self.qkv is None:   # the engine fuses them once the model is loaded
            self.fuse_projections()
        qkv = F.linear(x, *self.qkv)
        qk_width = (self.heads + self.kv_heads) * self.head_dim
        qk = apply_rotary(qkv[:, :qk_width].view(n, -1, self.head_dim), cos_sin)   # q and k rotated by one call
        q, k = qk[:, :self.heads], qk[:, self.heads:]
        v = qkv[:, qk_width:].view(n, self.kv_heads, self.head_dim)
        k_flat = kv_cache[0].view(-1, self.kv_heads, self.head_dim)
        v_flat = kv_cache[1].view(-1, self.kv_heads, self.head_dim)
        if meta.kv_tiers is not None:   # --kv-offload: written into the device cache, the pool is host memory
            meta.kv_tiers[self.layer_idx].write(meta.slot_mapping, meta.slot_mapping_host, k, v)
        else:
            k_flat.index_copy_(0, meta.slot_mapping, k)
            v_flat.index_copy_(0, meta.slot_mapping, v)

        out = torch.empty_like(q)
        for p in meta.prefills:
            rows = slice(p.q_start, p.q_start + p.q_len)
            if p.kv_slots is None:   # a first chunk: its own keys
                out[rows] = self._attend(q[rows][None], k[rows][None], v[rows][None], p.mask)[0]
            elif p.mask is None:     # every cached key visible (CPU): [context | chunk] pieces
                out[rows] = self._attend_after_context(q[rows], self._context(q[rows], p, k_flat, v_flat, meta),
                                                       k[rows], v[rows])
            else:
                keys, values = meta.gather_buffers.keys_values(k_flat, v_flat, p.kv_slots)
                out[rows] = self._attend(q[rows][None], keys[None], values[None], p.mask)[0]
        for r in meta.retrieval:
            rows = slice(r.q_start, r.q_start + r.q_len)
            out[rows] = retrieval_attention(q[rows], k_flat, v_flat, r, self.layer_idx, meta.retrieval_context,
                                            self.scale)
        if meta.decode_rows.numel():
            keys, values = meta.gather_buffers.keys_values(k_flat, v_flat, meta.decode_slots)
            out[meta.decode_rows] = self._attend_decode(q[meta.decode_rows], keys, values, meta.decode_mask)
        for row, context in meta.decode_in_place:
            q_heads = q[row][None, :, None]
            pieces = context_pieces(q_heads, k_flat, v_flat, context, meta.gather_buffers, self.scale)
            out[row] = merge_pieces(pieces, with_lse=False)[0][0, :, 0].to(q.dtype)
        return self.o_proj(out.view(n, -1))

    def _dense_causal(self, x: torch.Tensor, cos_sin) -> torch.Tensor:
        """Plain causal attention; with `bounded` set, the engine's bounded-position retrieval attention with every
        block retrieved (engine.layers.bounded_dense), for training."""
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim)
        if self.bounded is not None and t > self.bounded[0]:   # shorter: every key is within the local window
            out = bounded_causal_attention(q, k, v, cos_sin, *self.bounded, self.scale)
        else:
            out = self._attend(apply_rotary(q, cos_sin), apply_rotary(k, cos_sin), v, None)
        return self.o_proj(out.reshape(b, t, -1))

    def _attend_decode(self, q, k, v, mask):
        """One query per sequence: q [B, H, D], k/v [B, L, Hkv, D] -> [B, H, D]. The query heads that share a KV
        head are that head's query rows, so the keys are not repeated per query head."""
        b = q.shape[0]
        grouped = q.view(b, self.kv_heads, -1, self.head_dim)
        o = F.scaled_dot_product_attention(grouped, k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
                                           scale=self.scale)
        return o.reshape(b, self.heads, self.head_dim)

    def _context(self, q, p: PrefillSlice, k_flat, v_flat, meta: AttentionMetadata):
        """A prefill chunk q [T, H, D]'s attention over its cached context (every key visible), as fp32 pieces."""
        q_heads = q.transpose(0, 1)[None]
        if p.context is not None:
            return context_pieces(q_heads, k_flat, v_flat, p.context, meta.gather_buffers, self.scale)
        keys, values = meta.gather_buffers.keys_values(k_flat, v_flat, p.kv_slots[:p.ctx_start])
        out, lse, _ = flash_piece(q_heads, keys.transpose(0, 1), values.transpose(0, 1), self.scale)
        return [(out.float(), lse.float())]

    def _attend_after_context(self, q, context, k, v):
        """A prefill chunk q [T, H, D] over its cached context (`context`: its attention pieces) and itself
        (causal), merged in fp32: no [T, context + T] mask is built."""
        q_heads = q.transpose(0, 1)[None]
        own, own_lse, _ = flash_piece(q_heads, k.transpose(0, 1), v.transpose(0, 1), self.scale, causal=True)
        out, _ = merge_pieces([(own.float(), own_lse.float()), *context], with_lse=False)
        return out[0].transpose(0, 1).to(q.dtype)

    def _attend(self, q, k, v, mask):
        """q [B, Tq, H, D], k/v [B, Tk, Hkv, D] -> [B, Tq, H, D]."""
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        is_causal = mask is None and q.shape[2] > 1
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=self.scale,
                                           enable_gqa=self.heads != self.kv_heads)
        return o.transpose(1, 2)
