"""The paged KV block pool: which blocks are free and which sequence owns which (no tensors here)."""
from collections import deque

from engine.sequence import Sequence


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.free_blocks: deque[int] = deque(range(num_blocks))

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_blocks)

    @property
    def usage(self) -> float:
        """Fraction of the pool in use, 0..1."""
        return 1.0 - len(self.free_blocks) / self.num_blocks

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def can_allocate(self, seq: Sequence, num_tokens: int) -> bool:
        """Whether `seq` can hold `num_tokens` tokens in total."""
        return self.blocks_for(num_tokens) - len(seq.block_table) <= len(self.free_blocks)

    def allocate(self, seq: Sequence, num_tokens: int):
        for _ in range(self.blocks_for(num_tokens) - len(seq.block_table)):
            seq.block_table.append(self.free_blocks.popleft())

    def free(self, seq: Sequence):
        self.free_blocks.extend(seq.block_table)
        seq.block_table = []
