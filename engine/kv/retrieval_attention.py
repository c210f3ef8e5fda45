"""Attention of one sequence in one layer under a KV selection policy, in windows of query tokens.

Each window [a, b) of up to `window` queries (one token at decode) attends to:
  sinks (the first `sink` tokens) + the blocks its policy selects + the local region
  (from the block boundary at or below `b − local` up to b, causal inside), so that its last query attends at most
  sink + local + (block − 1) + selected blocks tokens, within the budget.
Candidates are the whole blocks between the sinks and the local region. With `positions="bounded"` the sinks and
retrieved keys are attended as if they sat `local` tokens before each query (queries and keys rotated to one
relative angle, InfLLM's scheme); with `positions="compressed"` they keep their order and sit side by side at
positions 0, 1, .., G−1, and the local region follows at G (the context as if the blocks left out were cut from it).
Either way local keys keep their relative positions. The `full` policy is the same code with every key in the local
region, so it is exact attention.

A window's attention is computed as flash-attention pieces (global keys; local keys before the window; the window
itself, causal) merged by their log-sum-exp, so no score matrix is materialised except for the local keys of the
policies that need the attention those keys receive (infllm, actqkv: it picks the block representatives, where a
run of tokens has more keys than are averaged; KVConfig.needs_received).
"""
from dataclasses import dataclass

import torch

from engine.kv import policies
from engine.kv.config import KVConfig
from engine.kv.state import SequenceKVState
from engine.kv.summaries import POLICY_SUMMARIES
from engine.kv.tile_cache import TileCache
from engine.kv.tiers import DeviceBlockCache
from engine.layers.attention_pieces import EXP_FLOOR, flash_piece, merge_pieces
from engine.layers.rotary import RotaryEmbedding, rotate_by, unrotate_blocks, unrotate_range, unrotation_matrix


TILE_CACHE = True          # CPU: read the sinks and retrieved blocks through a TileCache (tests compare without)
# ... where a KV head's row in the pool is this small or smaller. Gathering one head's rows from the pool is slow per
# byte for small rows (128 B: 3x slower than 512 B), which is what the cache saves. Measured side by side at 32k:
# head_dim 32 fp32 (128 B) decodes 1.14x faster with the cache; head_dim 64 fp32 (256 B) 0.91x (1.1B shape).
TILE_MAX_ROW_BYTES = 128
# The cache's size per KV head, in retrieved blocks per layer (besides the sinks): the blocks a request retrieves over
# its recent steps are ~5-6x what one step retrieves. Demo model, 32k, 128 steps: misses per layer 8-26% with 3x,
# 1-3.5% with 6x; decode 14.0 -> 11.9 ms per token (bench/RESULTS.md, session 18).
TILE_CACHE_BLOCKS = 6


@dataclass
class RetrievalSlice:
    """One sequence's tokens of a step, attended under its retrieval policy."""
    q_start: int                  # first row in the flattened step
    q_len: int
    ctx_start: int                # tokens already cached before this step
    slots: torch.Tensor           # cache slots of all ctx_start + q_len tokens
    block_ids: torch.Tensor       # the sequence's block table
    state: SequenceKVState
    prefilling: bool = False      # the step's tokens are (part of) the prompt
    block_table: list[int] | None = None   # block_ids on the host (KV tiers); None: read from block_ids
    unrotation: torch.Tensor | None = None   # decode: moves the query to the retrieved keys' angle (first layer's)

    def host_table(self) -> list[int]:
        """The block table on the host (read from the device if the runner did not give it)."""
        if self.block_table is None:
            self.block_table = self.block_ids.tolist()
        return self.block_table


@dataclass
class RetrievalContext:
    received: list[torch.Tensor]   # per layer: attention each pool slot received (engine.kv.summaries)
    rotary: RotaryEmbedding
    block_size: int
    tiers: list[DeviceBlockCache] | None = None   # per layer, with --kv-offload: the pool is read through these


def retrieval_attention(q: torch.Tensor, k_flat: torch.Tensor, v_flat: torch.Tensor, item: RetrievalSlice,
                        layer: int, ctx: RetrievalContext, scale: float) -> torch.Tensor:
    """q [T, H, D] (post-RoPE) for positions ctx_start.. -> attention output [T, H, D]. `k_flat`/`v_flat` are the
    pool's flat views; with KV tiers the blocks are read through the layer's device cache instead."""
    cfg, bs = item.state.config, ctx.block_size
    tier = ctx.tiers[layer] if ctx.tiers is not None else None
    if tier is not None:
        k_flat, v_flat = tier.k_flat, tier.v_flat
    record = cfg.needs_received(bs)   # the attention that local keys receive picks the representatives
    if record:
        ctx.received[layer].index_fill_(0, item.slots[item.ctx_start:], 0.0)   # not `[idx] = 0.0`: a host copy
    sink_end = min(cfg.sink_tokens(bs), item.slots.shape[0])
    mean_k = cfg.blocks_per_layer(bs)
    tiles = None if tier is not None else _tiles(item, layer, k_flat, bs)
    outputs = []
    for a in range(item.ctx_start, item.ctx_start + item.q_len, cfg.window):
        b = min(a + cfg.window, item.ctx_start + item.q_len)
        rows = slice(a - item.ctx_start, b - item.ctx_start)
        local_start = max(sink_end, (b - cfg.local) // bs * bs)
        if cfg.policy == "full" or local_start <= sink_end:
            local_start = 0  # every key is local: exact causal attention
        _finalize(item, layer, ctx, k_flat, local_start // bs, cfg, tier)
        positions = torch.arange(a, b, device=q.device)
        qw = q[rows]
        global_blocks, block_keep = positions[:0], None   # logical blocks: [nb] shared, [Hkv, nb] per head
        q_global, retrieved = None, []
        if local_start > sink_end:
            first, last = sink_end // bs, local_start // bs
            q_global = _one_angle(qw, positions, a, b, cfg.local, ctx.rotary, item)
            decoding = item.q_len == 1 and not item.prefilling
            kept = item.state.reusable_selection(layer, last, decoding)
            if kept is None:
                chosen, keep, retrieved = _select(qw, q_global, item, layer, ctx, first, last, mean_k)  # [K]/[K,Hkv]
                global_blocks, block_keep = _global_blocks(chosen, first, keep)
                if decoding:
                    item.state.keep_selection(layer, last, (global_blocks, block_keep, retrieved))
            else:
                global_blocks, block_keep, retrieved = kept
        global_slots = global_keep = None
        if tiles is None or block_keep is not None:   # read by slot from the pool (or the device cache)
            global_slots = item.slots[_block_positions(global_blocks, bs)]
            global_keep = None if block_keep is None else block_keep.repeat_interleave(bs, dim=-1)
        local_slots = item.slots[local_start:b]
        read_global, read_local, ready = global_slots, local_slots, None
        if tier is not None:   # local region, sinks and retrieved blocks resident at once; copied in that order
            table = item.host_table()
            ready = tier.fetch(table[local_start // bs:-(-b // bs)], table[:sink_end // bs] + retrieved)
            read_global, read_local = tier.translate(global_slots), tier.translate(local_slots)
        if cfg.trace:
            picked = global_blocks[..., sink_end // bs:]
            picked = picked if block_keep is None else picked[block_keep[..., sink_end // bs:]]
            chosen_blocks = set(picked.flatten().tolist()) if local_start > sink_end else set()
            item.state.last_attended[layer] = (chosen_blocks, sink_end if local_start > sink_end else b, local_start)
        outputs.append(_attend(qw, q_global, a, positions, global_blocks, read_global, global_keep, read_local,
                               local_slots, local_start, k_flat, v_flat, layer, ctx, scale,
                               positions_mode=cfg.positions, record_received=record,
                               ready=ready, tiles=tiles, block_ids=item.block_ids))
        attended_global = (global_blocks.shape[-1] * bs if block_keep is None
                           else sink_end + item.state.blocks_selected[layer] * bs)
        item.state.tokens_attended[layer] = attended_global + local_slots.shape[0]
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


def _select(qw, q_global, item, layer, ctx, first: int, last: int, mean_k: int):
    """(logical indices of the chosen candidate blocks (between `first` and `last`), None, their physical ids on
    the host with KV tiers or else None); or, where the count is a device tensor (ActQKV's cut-off off the CPU,
    without tiers), a static top-(2k), the mask of those kept, and None."""
    cfg, s = item.state.config, item.state.summaries
    if cfg.policy == "streaming":
        chosen, count = item.block_ids[:0], 0
    else:
        if cfg.policy == "quest":
            scores = policies.quest_scores(qw, s.get("kmin", layer, first, last), s.get("kmax", layer, first, last))
        elif cfg.policy == "infllm":
            scores = policies.infllm_scores(q_global, s.get("repr", layer, first, last))
        else:
            scores = policies.actqkv_scores(q_global, s.get("repr_unit", layer, first, last), item.state, layer,
                                            item.prefilling)
        chosen, count = policies.choose_blocks(scores, cfg, item.state, layer, mean_k)
    if ctx.tiers is not None:   # the blocks are fetched by their ids on the host: the count comes in the same read
        host = torch.cat([chosen.flatten(), torch.as_tensor(count, device=chosen.device).view(1)]).tolist()
        count = host[-1]
        item.state.blocks_selected[layer] = count
        ids = host[:count * (chosen.shape[1] if chosen.dim() == 2 else 1)]
        return chosen[:count] + first, None, [item.host_table()[first + i] for i in ids]
    if isinstance(count, int) or (chosen.device.type == "cpu" and not policies.STATIC_SELECTION):
        count = int(count)   # free on the CPU
        item.state.blocks_selected[layer] = count
        return chosen[:count] + first, None, None
    item.state.blocks_selected[layer] = count
    return chosen + first, torch.arange(chosen.shape[0], device=chosen.device) < count, None


def _global_blocks(chosen: torch.Tensor, sink_blocks: int, keep: torch.Tensor | None = None):
    """The logical blocks a window attends besides its local region: the sink blocks, then the chosen ones
    ([K] shared or [K, Hkv] per head) in position order: [nb] or [Hkv, nb]. And `keep` (the chosen blocks' mask, if
    any) in the same layout, True for the sinks."""
    chosen, order = chosen.sort(dim=0)
    sinks = torch.arange(sink_blocks, device=chosen.device)
    if keep is not None:
        keep = keep[order]
    if chosen.dim() == 2:
        chosen, sinks = chosen.T, sinks.expand(chosen.shape[1], -1)
        keep = None if keep is None else keep.T
    if keep is not None:
        keep = torch.cat([torch.ones_like(sinks, dtype=torch.bool), keep], dim=-1)
    return torch.cat([sinks, chosen], dim=-1), keep


def _block_positions(blocks: torch.Tensor, bs: int) -> torch.Tensor:
    """Token positions of logical blocks [..., nb] -> [..., nb·bs]."""
    return (blocks[..., None] * bs + torch.arange(bs, device=blocks.device)).flatten(-2)


def _gather(flat: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """Keys or values at `slots`: [S] shared -> [S, Hkv, D]; [Hkv, S] per head -> [Hkv, S, D] (head-major)."""
    if slots.dim() == 1:
        return flat.index_select(0, slots)
    kv_heads = flat.shape[1]
    rows = slots * kv_heads + torch.arange(kv_heads, device=slots.device)[:, None]     # into [slots·Hkv, D]
    return flat.reshape(-1, flat.shape[-1]).index_select(0, rows.flatten()).view(*slots.shape, -1)


def _tiles(item: RetrievalSlice, layer: int, k_flat: torch.Tensor, bs: int) -> TileCache | None:
    """The sequence's TileCache for `layer` (made on first use), or None where tiles are not used (CUDA, large
    rows)."""
    if not TILE_CACHE or k_flat.device.type != "cpu" or k_flat.shape[-1] * k_flat.element_size() > TILE_MAX_ROW_BYTES:
        return None
    tiles = item.state.tiles[layer]
    if tiles is None:
        cfg, kv_heads = item.state.config, k_flat.shape[1]
        capacity = kv_heads * (cfg.sink_tokens(bs) // bs + TILE_CACHE_BLOCKS * cfg.blocks_per_layer(bs))
        tiles = item.state.tiles[layer] = TileCache(capacity, bs, k_flat.shape[-1], k_flat.device)
    return tiles


def _tile_loader(k_flat, v_flat, block_ids: torch.Tensor, ctx: RetrievalContext, pre_rope: bool, max_position: int):
    """TileCache's loader: keys (un-rotated if `pre_rope`) and values [m, bs, D] of KV `heads` [m] of logical
    `blocks` [m], gathered from the pool's flat views."""
    bs, kv_heads, dim = ctx.block_size, k_flat.shape[1], k_flat.shape[-1]

    def load(heads: torch.Tensor, blocks: torch.Tensor):
        slots = block_ids[blocks][:, None] * bs + torch.arange(bs, device=blocks.device)        # [m, bs]
        rows = (slots * kv_heads + heads[:, None]).flatten()                                     # into [slots·Hkv, D]
        keys = k_flat.reshape(-1, dim).index_select(0, rows).float()
        if pre_rope:
            keys = unrotate_blocks(keys, blocks, bs, ctx.rotary, max_position)
        return keys.view(-1, bs, dim), v_flat.reshape(-1, dim).index_select(0, rows).view(-1, bs, dim)
    return load


def _one_angle(q, positions, a: int, b: int, distance: int, rotary, item: RetrievalSlice) -> torch.Tensor:
    """Queries at `positions` (= a..b-1) moved to position `distance` (pre-RoPE keys then sit `distance` behind)."""
    if a >= distance:   # the usual case: every query moves back, by a consecutive range of offsets
        if item.q_len > 1:
            return unrotate_range(q, a - distance, rotary)
        if item.unrotation is None:   # decode: by the slice's matrix, made once for all layers
            item.unrotation = unrotation_matrix(a - distance, rotary, q.device, q.dtype)
        return q @ item.unrotation
    return rotate_by(q, distance - positions, rotary, max(abs(distance - a), abs(distance - b)) + 1)


def _attend(qw, q_global, a: int, positions, global_blocks, global_slots, global_keep, local_slots,
            pool_local_slots, local_start, k_flat, v_flat, layer, ctx, scale, positions_mode: str,
            record_received: bool, ready=None, tiles: TileCache | None = None, block_ids: torch.Tensor | None = None
            ) -> torch.Tensor:
    """Softmax attention of window queries over [global keys | local keys], as flash-attention pieces merged by
    their log-sum-exp: global keys (the sinks and retrieved logical `global_blocks`; only those in `global_keep`,
    when given), local keys before the window, and the window itself (causal). Slots index `k_flat`/`v_flat`; the
    global keys are read through `tiles` (with the sequence's `block_ids`) when `global_slots` is None.
    `pool_local_slots` are the local keys' pool slots. With KV tiers, `ready(0)` / `ready(1)` wait for the local /
    other blocks' copies before they are read."""
    w, heads, dim = qw.shape
    if ready is not None:
        ready(0)
    keys_local = k_flat.index_select(0, local_slots).float()
    values_local = v_flat.index_select(0, local_slots).float()
    q_heads = qw.float().permute(1, 0, 2)[None]                                         # [1, H, w, D]
    before = a - local_start
    assert before >= 0, "the window must lie inside the local region (KVConfig: window <= local)"
    local_scores = None
    if w == 1:   # decode: every local key is visible; one piece, with its scores when they are recorded
        out_local, lse_local, local_scores = flash_piece(q_heads, keys_local.transpose(0, 1),
                                                         values_local.transpose(0, 1), scale,
                                                         keep_scores=record_received)
        pieces = [(out_local, lse_local)]
    else:
        head_major_k, head_major_v = keys_local.transpose(0, 1), values_local.transpose(0, 1)
        pieces = [flash_piece(q_heads, head_major_k[:, before:], head_major_v[:, before:], scale, causal=True)[:2]]
        if before > 0:
            pieces.append(flash_piece(q_heads, head_major_k[:, :before], head_major_v[:, :before], scale)[:2])
    if ready is not None:
        ready(1)
    if global_blocks.shape[-1]:
        moved = positions_mode != "original" and q_global is not None   # keys pre-RoPE, then placed
        if global_slots is None:
            per_head = global_blocks if global_blocks.dim() == 2 else global_blocks.expand(k_flat.shape[1], -1)
            load = _tile_loader(k_flat, v_flat, block_ids, ctx, moved, local_start)
            keys_global, values_global = tiles.gather(per_head, local_start // ctx.block_size, load)
        else:
            keys_global = _gather(k_flat, global_slots).float()     # [S, Hkv, D] shared, [Hkv, S, D] per head
            if moved:
                keys_global = unrotate_blocks(keys_global, global_blocks, ctx.block_size, ctx.rotary,
                                              local_start)   # pre-RoPE
            values_global = _gather(v_flat, global_slots).float()
            if global_slots.dim() == 1:
                keys_global, values_global = keys_global.transpose(0, 1), values_global.transpose(0, 1)
        q_for_global = q_heads
        if moved and positions_mode == "bounded":
            q_for_global = q_global.float().permute(1, 0, 2)[None]
        elif moved:
            keys_global, q_for_global = _compress(keys_global, qw, global_keep, local_start, ctx)
        pieces.append(flash_piece(q_for_global, keys_global, values_global, scale, mask=global_keep)[:2])
    out, lse = merge_pieces(pieces, with_lse=record_received)
    if record_received:
        _record_received(q_heads, keys_local, local_start, positions, lse, pool_local_slots, layer, ctx, scale,
                         local_scores)
    return out[0].permute(1, 0, 2).to(qw.dtype)


def _compress(keys_global, qw, global_keep, local_start: int, ctx: RetrievalContext):
    """Compressed positions: the global keys (pre-RoPE, [Hkv, S, D]) placed side by side at 0, 1, .. in their order
    (the kept ones, where `global_keep` [S] / [Hkv, S] masks them), and the window's queries `qw` [w, H, D] (post-RoPE
    at their true positions) moved back so that the local region starts right after them:
    ([Hkv, S, D], [1, H, w, D])."""
    s = keys_global.shape[1]
    if global_keep is None:
        ranks, attended = torch.arange(s, device=qw.device), s
    else:   # the same count in every head: no host sync, the mask stays on the device
        ranks = global_keep.long().cumsum(-1) - 1
        attended = global_keep.reshape(-1, s)[0].sum()
    ranks = ranks.clamp(min=0).expand(keys_global.shape[0], -1)
    keys_global = rotate_by(keys_global, ranks, ctx.rotary, s)
    shift = torch.as_tensor(attended - local_start, device=qw.device).expand(qw.shape[0])
    q = rotate_by(qw.float(), shift, ctx.rotary, local_start)
    return keys_global, q.permute(1, 0, 2)[None]


def _record_received(q_heads, keys_local, local_start, positions, lse, local_slots, layer, ctx, scale,
                     scores: torch.Tensor | None = None):
    """Add to each local key the attention probability it received from the window's queries (summed over the
    queries and the query heads of its KV head): what picks the representative keys of a block. `scores`: the
    local keys' scaled scores [1, Hkv, g·w, L], if already computed (decode)."""
    kv_heads = keys_local.shape[1]
    group = q_heads.shape[1] // kv_heads
    q = q_heads[0].reshape(kv_heads, group * q_heads.shape[2], -1)                      # [Hkv, g·w, D]
    if scores is None:
        scores = torch.bmm(q, keys_local.permute(1, 2, 0)) * scale                     # [Hkv, g·w, L]
    probs = (scores.view(kv_heads, q.shape[1], -1) - lse[0].reshape(kv_heads, -1, 1)).clamp_(min=EXP_FLOOR).exp_()
    if positions.shape[0] > 1:   # causal inside the window
        key_pos = torch.arange(local_start, local_start + keys_local.shape[0], device=q.device)
        visible = (key_pos[None, :] <= positions[:, None]).repeat(group, 1)            # [g·w, L]
        probs.masked_fill_(~visible, 0.0)
    ctx.received[layer].index_add_(0, local_slots, probs.sum(1).T)


def _finalize(item: RetrievalSlice, layer: int, ctx: RetrievalContext, k_flat, upto: int, cfg: KVConfig,
              tier: DeviceBlockCache | None = None):
    """Summarise the sequence's blocks that have left the local region (logical blocks below `upto`)."""
    done = item.state.finalized[layer]
    if upto <= done:
        return
    bs = ctx.block_size
    physical = item.block_ids[done:upto]
    if tier is not None:
        tier.resident(item.host_table()[done:upto])
    read = physical if tier is None else tier.where[physical]
    keys = k_flat.view(-1, bs, *k_flat.shape[1:])[read]
    received = ctx.received[layer].view(-1, bs, keys.shape[2])[physical] if cfg.needs_received(bs) else None
    item.state.summaries.summarize(layer, keys, done * bs, received, ctx.rotary, cfg.repr_topk,
                                   cfg.representatives(bs), cfg.per_head, POLICY_SUMMARIES[cfg.policy])
    item.state.finalized[layer] = upto
