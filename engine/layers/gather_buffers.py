"""Reused output buffers for the KV gathers of the plain attention paths.

A decode step gathers every cached key and value of each sequence, layer after layer: at 32k tokens that is 16 MiB
per tensor on the demo model and 32 MiB on a 1B model. Allocated afresh each time, tensors that size come from
mmap on the CPU (see engine.malloc_tuning; 32 MiB and more always do), and touching them costs a page fault per
4 KiB, more than the copy itself. One buffer per name, grown geometrically, is reused instead.
"""
import math

import torch


class GatherBuffers:
    def __init__(self):
        self._buffers: dict[str, torch.Tensor] = {}

    def index_select(self, name: str, source: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """`source[index]` for an index tensor of any shape, written into the buffer `name`: valid until the next
        call with that name."""
        rows = (index.numel(), *source.shape[1:])
        numel = math.prod(rows)
        buffer = self._buffers.get(name)
        if buffer is None or buffer.numel() < numel or buffer.dtype != source.dtype or buffer.device != source.device:
            grown = numel if buffer is None else max(numel, 2 * buffer.numel())
            buffer = self._buffers[name] = torch.empty(grown, dtype=source.dtype, device=source.device)
        out = torch.index_select(source, 0, index.reshape(-1), out=buffer[:numel].view(rows))
        return out.view(*index.shape, *source.shape[1:])

    def keys_values(self, k_flat: torch.Tensor, v_flat: torch.Tensor, slots: torch.Tensor):
        """The keys and values at cache `slots` (any shape): [*slots.shape, Hkv, D] each."""
        return self.index_select("k", k_flat, slots), self.index_select("v", v_flat, slots)
