"""Reused output buffers for the KV gathers of the plain attention paths (CPU).

A decode step gathers every cached key and value of each sequence, layer after layer: at 32k tokens that is 16 MiB
per tensor on the demo model and 32 MiB on a 1B model. Allocated afresh each time, tensors that size come from
mmap on the CPU (see engine.malloc_tuning; 32 MiB and more always do), and touching them costs a page fault per
4 KiB, more than the copy itself. One buffer per name is reused instead, grown by a quarter at a time as the
context grows. CUDA's caching allocator already reuses its blocks: there the buffers are off (`reuse=False`), so
that no memory outside the KV pool stays held.
"""
import math

import torch


class GatherBuffers:
    def __init__(self, reuse: bool = True):
        self.reuse = reuse
        self._buffers: dict[str, torch.Tensor] = {}

    def index_select(self, name: str, source: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """`source[index]` for an index tensor of any shape; with `reuse`, written into the buffer `name` and valid
        until the next call with that name."""
        shape = (*index.shape, *source.shape[1:])
        if not self.reuse:
            return source.index_select(0, index.reshape(-1)).view(shape)
        rows = (index.numel(), *source.shape[1:])
        numel = math.prod(rows)
        buffer = self._buffers.get(name)
        if buffer is None or buffer.numel() < numel or (buffer.dtype, buffer.device) != (source.dtype, source.device):
            size = max(numel, buffer.numel() * 5 // 4) if buffer is not None else numel
            buffer = self._buffers[name] = torch.empty(size, dtype=source.dtype, device=source.device)
        return torch.index_select(source, 0, index.reshape(-1), out=buffer[:numel].view(rows)).view(shape)

    def keys_values(self, k_flat: torch.Tensor, v_flat: torch.Tensor, slots: torch.Tensor):
        """The keys and values at cache `slots` (any shape): [*slots.shape, Hkv, D] each."""
        return self.index_select("k", k_flat, slots), self.index_select("v", v_flat, slots)
