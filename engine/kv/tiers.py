"""KV tiers: the block pool in host memory and an LRU cache of blocks on the device in front of it.

With `--kv-offload` the paged pool lives in host memory (pinned on CUDA) and only the blocks a step touches are
resident on the device, in a per-layer cache of `--kv-device-cache-blocks` blocks: the device-resident KV is bounded
by the cache, not by the context length (the block summaries stay on the device: R/(2·block_size) of an fp32 pool
for actqkv and infllm, R the representatives per block; 1/block_size for quest). The cache is write-back: a step's
new keys and values are written into cached blocks, and a block is copied back to the pool only when it is evicted
dirty. Copies run on a side stream on CUDA. A window's blocks are fetched in two groups (`fetch`): its local region
first, then its sinks and retrieved blocks; the compute stream waits for each group only where it reads it, so the
retrieved blocks' copies overlap the local attention. On the CPU both tiers are RAM (the same code path, used by the
tests); without offload there is one tier and the pool is read directly.

Only retrieval policies read through the cache: each window of a request needs its sinks, local region and
retrieved blocks resident at once, which the cache must hold (checked at start-up against the engine's settings).
"""
from collections import OrderedDict
from contextlib import nullcontext

import torch


class DeviceBlockCache:
    """One layer's device cache of KV blocks in front of its host pool (see the module docstring)."""

    def __init__(self, k_host: torch.Tensor, v_host: torch.Tensor, capacity: int, device: torch.device):
        self.k_host, self.v_host = k_host, v_host                 # [num_blocks, bs, Hkv, D]
        self.block_size = k_host.shape[1]
        shape = (capacity, *k_host.shape[1:])
        self.k = torch.zeros(shape, dtype=k_host.dtype, device=device)
        self.v = torch.zeros(shape, dtype=k_host.dtype, device=device)
        self.k_flat, self.v_flat = self.k.view(-1, *shape[2:]), self.v.view(-1, *shape[2:])
        self.capacity = capacity
        self.where = torch.full((k_host.shape[0],), -1, dtype=torch.long, device=device)  # block -> cache slot
        self.lru: OrderedDict[int, int] = OrderedDict()           # resident blocks, least recently used first
        self.dirty: set[int] = set()
        self.free = list(range(capacity - 1, -1, -1))
        self.hits = self.misses = 0
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def resident(self, blocks, dirty: bool = False, count: bool = True):
        """Load the missing ones of the physical `blocks` (list or tensor; a tensor is read on the host), evicting
        the least recently used others; the compute stream waits for the copies. `count`: add the lookups to the
        hit and miss counts (reads, not writes)."""
        wanted = list(dict.fromkeys(blocks.flatten().tolist() if torch.is_tensor(blocks) else blocks))
        self._wait(self._load(wanted, self._plan(wanted, count), dirty))

    def fetch(self, first: list[int], then: list[int]):
        """Make the blocks `first` and `then` resident together, copying those of `first` before those of `then`;
        returns a function to call before reading each group: `ready(0)` for `first`, `ready(1)` for `then`.
        Compute queued between the two calls overlaps the copies of `then` (on CUDA)."""
        wanted = list(dict.fromkeys(first + then))
        loads = self._plan(wanted, count=True)
        early = set(first)
        events = [self._load(first, [x for x in loads if x[0] in early]),
                  self._load(then, [x for x in loads if x[0] not in early])]
        return lambda group: self._wait(events[group])

    def _plan(self, wanted: list[int], count: bool) -> list[tuple[int, int, int | None]]:
        """Cache slots for the missing blocks of `wanted`: (block, slot, evicted block or None), LRU order updated."""
        if len(wanted) > self.capacity:
            raise RuntimeError(f"a window needs {len(wanted)} KV blocks resident but the device cache holds "
                               f"{self.capacity}: raise --kv-device-cache-blocks")
        keep = set(wanted)
        loads = []
        for block in wanted:
            if block in self.lru:
                self.lru.move_to_end(block)
                self.hits += count
                continue
            self.misses += count
            old = None
            if self.free:
                slot = self.free.pop()
            else:
                old = next(b for b in self.lru if b not in keep)
                slot = self.lru.pop(old)
            self.lru[block] = slot
            loads.append((block, slot, old))
        return loads

    def _load(self, blocks: list[int], loads, dirty: bool = False):
        """Write back the evicted dirty blocks and copy in `loads` (on the side stream on CUDA); mark `blocks`
        dirty if asked. Returns the copies' CUDA event (None: nothing to wait for)."""
        if dirty:
            self.dirty.update(blocks)
        if not loads:
            return None
        current = torch.cuda.current_stream(self.k.device) if self.stream is not None else None
        if self.stream is not None:
            self.stream.wait_stream(current)   # the slots being reused are no longer read by queued compute
        with torch.cuda.stream(self.stream) if self.stream is not None else nullcontext():
            for _, slot, old in loads:
                if old is not None and old in self.dirty:
                    self.k_host[old].copy_(self.k[slot], non_blocking=True)
                    self.v_host[old].copy_(self.v[slot], non_blocking=True)
                    self.dirty.discard(old)
            for block, slot, _ in loads:
                self.k[slot].copy_(self.k_host[block], non_blocking=True)
                self.v[slot].copy_(self.v_host[block], non_blocking=True)
        gone = torch.tensor([old for _, _, old in loads if old is not None], dtype=torch.long)
        moved = torch.tensor([block for block, _, _ in loads], dtype=torch.long)
        self.where[gone.to(self.where.device)] = -1
        self.where[moved.to(self.where.device)] = torch.tensor([slot for _, slot, _ in loads]).to(self.where.device)
        return self.stream.record_event() if self.stream is not None else None

    def _wait(self, event):
        if event is not None:
            torch.cuda.current_stream(self.k.device).wait_event(event)

    def translate(self, slots: torch.Tensor) -> torch.Tensor:
        """Pool slots (block·bs + offset, any shape) of resident blocks -> slots of the cache's flat views."""
        return self.where[slots // self.block_size] * self.block_size + slots % self.block_size

    def write(self, slots: torch.Tensor, slots_host: list[int], k: torch.Tensor, v: torch.Tensor):
        """Write a step's new keys/values (pool `slots`, also given on the host) into their cached blocks."""
        self.resident(sorted({s // self.block_size for s in slots_host}), dirty=True, count=False)
        cached = self.translate(slots)
        self.k_flat.index_copy_(0, cached, k)
        self.v_flat.index_copy_(0, cached, v)


def blocks_needed(kv, block_size: int, kv_heads: int) -> int:
    """The most blocks one prefill window of a request with KV settings `kv` needs resident per layer: sinks, the
    local region reaching back from the window's end (plus its partial block), and up to 2·budget retrieved blocks
    for each KV head that selects its own (per-KV-head selection)."""
    retrieved = 2 * kv.blocks_per_layer(block_size) * (kv_heads if kv.per_head else 1)
    return -(-kv.sink // block_size) + -(-(kv.local + kv.window) // block_size) + 1 + retrieved


def offload_problem(kv, block_size: int, capacity: int, kv_heads: int) -> str | None:
    """Why a request's KV settings cannot be served with KV tiers (None if they can)."""
    if kv.policy == "full":
        return ("kv_policy full attends the whole context, which --kv-offload keeps off the device: "
                "choose a retrieval policy (streaming, infllm, quest, actqkv).")
    need = blocks_needed(kv, block_size, kv_heads)
    if need > capacity:
        return (f"these KV settings need {need} blocks resident per layer but the device cache holds {capacity} "
                f"(--kv-device-cache-blocks): raise it, or lower kv_budget, kv_local or kv_window (per-head selection "
                f"needs up to {kv_heads}x the retrieved blocks; kv_per_head=false needs fewer).")
    return None
