"""The sink and retrieved blocks of one request and layer, kept between steps as head-major tiles (CPU).

A tile is one KV head of one logical block: [block_size, head_dim] keys (un-rotated to position 0 with bounded
positions) and values, in fp32. The pool stores a token's KV heads side by side, so gathering one head's block
reads block_size rows of head_dim values far apart: a cold memory access per row. With the keys' un-rotation that
was about half of ActQKV's decode attention on the demo model at 32k. A decode step retrieves mostly what the steps
before it did (about 90% of a step's (block, head) pairs on the demo model at 32k were retrieved in the 8 steps
before), so the cache keeps tiles across steps, least recently used out first, and a step reads its tiles as
contiguous rows. Only the missing tiles are gathered from the pool and un-rotated.

CPU only: finding the missing tiles reads them on the host, a sync on CUDA (where the gathers are cheap anyway).
Used for small rows only (engine.kv.retrieval_attention.TILE_MAX_ROW_BYTES): larger rows gather efficiently.
Memory per request and layer: `capacity` tiles of keys and values, e.g. 8.9 MB on the demo model's shape, taken
at the first window that retrieves (a request shorter than its sinks and local window takes none).
"""
from typing import Callable

import torch

Loader = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class TileCache:
    """One request's and layer's tiles; `gather` returns those of the blocks a window attends to."""

    def __init__(self, capacity: int, block_size: int, head_dim: int, device: torch.device):
        self.capacity, self.tile_shape = capacity, (block_size, head_dim)
        self.k = self.v = None   # [capacity, block_size, head_dim] each, from the first window that needs a tile
        # block·Hkv + head -> slot, or -1; slot -> block·Hkv + head, or -1; slot -> step count last used (0: never).
        # slot_of and last_used end in a spare entry: the writes for "no slot" (index -1) land there, which saves
        # masking them out
        self.slot_of = torch.full((1,), -1, dtype=torch.long, device=device)
        self.owner = torch.full((capacity,), -1, dtype=torch.long, device=device)
        self.last_used = torch.zeros(capacity + 1, dtype=torch.long, device=device)
        self.head_offsets = torch.zeros(0, 1, dtype=torch.long, device=device)   # [Hkv, 1]: 0..Hkv-1
        self.clock = 0
        self.hits = self.misses = 0

    def gather(self, blocks: torch.Tensor, num_blocks: int, load: Loader) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [Hkv, nb·block_size, D] of logical `blocks` [Hkv, nb] (each head's row distinct), the
        blocks of a head in the row's order. `num_blocks` bounds the logical block ids. `load(heads, blocks)` gives
        the missing tiles' keys and values [m, block_size, D] as attended."""
        kv_heads, nb = blocks.shape
        if kv_heads * nb > self.capacity:
            raise ValueError(f"a window needs {kv_heads * nb} tiles, the cache holds {self.capacity}")
        if self.slot_of.shape[0] <= num_blocks * kv_heads:   # the sequence grew: room for its new blocks
            grown = torch.full((2 * num_blocks * kv_heads + 1,), -1, dtype=torch.long, device=self.slot_of.device)
            grown[:self.slot_of.shape[0] - 1] = self.slot_of[:-1]
            self.slot_of = grown
        if self.head_offsets.shape[0] != kv_heads:
            self.head_offsets = torch.arange(kv_heads, device=blocks.device)[:, None]
        self.clock += 1
        keys = (blocks * kv_heads + self.head_offsets).flatten()
        slots = self.slot_of[keys]
        missing = slots < 0
        count = int(missing.sum())
        self.misses += count
        self.hits += keys.shape[0] - count
        self.last_used[slots] = self.clock   # hits are not evicted for misses (misses write the spare entry)
        if count:
            if self.k is None:
                self.k = torch.empty(self.capacity, *self.tile_shape, device=slots.device)
                self.v = torch.empty_like(self.k)
            free = self.last_used[:-1].topk(count, largest=False).indices
            self.slot_of[self.owner[free]] = -1   # forget the evicted tiles (a never-owned slot writes the spare)
            wanted = keys[missing]
            self.owner[free] = wanted
            self.slot_of[wanted] = free
            k_new, v_new = load(wanted % kv_heads, wanted // kv_heads)
            self.k.index_copy_(0, free, k_new.float())
            self.v.index_copy_(0, free, v_new.float())
            self.last_used[free] = self.clock
            slots = slots.masked_scatter(missing, free)
        shape = (kv_heads, -1, self.k.shape[-1])
        return self.k.index_select(0, slots).view(shape), self.v.index_select(0, slots).view(shape)
