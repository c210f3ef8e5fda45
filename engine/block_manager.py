"""The paged KV block pool: which blocks are free and which sequence owns which (no tensors here).

With prefix caching, each full block whose KV a sequence has computed is registered under a key for its tokens
and everything before them: the SHA-256 of the key of the block before and its own token ids (a cryptographic
digest, so that no client can build a prompt whose blocks pass for another prompt's). A later sequence whose tokens
start the same way takes those blocks instead of computing them again; a block is shared by reference count. A
freed block keeps its KV and its key until the pool hands it out again: the free list is first in, first out, so
the blocks freed longest ago go first, and blocks freed together are handed out together (runs of consecutive
blocks stay runs, which the CPU attention reads in place).
"""
import hashlib
from array import array
from collections import OrderedDict

from engine.sequence import Sequence


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_caching: bool = False):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.free_blocks: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.ref_counts = [0] * num_blocks
        self.cached: dict[bytes, int] = {}       # block key -> block holding that KV
        self.key_of: dict[int, bytes] = {}       # block -> its key, for the registered blocks

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_blocks)

    @property
    def usage(self) -> float:
        """Fraction of the pool in use, 0..1 (cached blocks that no sequence holds count as free)."""
        return 1.0 - len(self.free_blocks) / self.num_blocks

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def can_allocate(self, seq: Sequence, num_tokens: int, prefix: list[int] = ()) -> bool:
        """Whether `seq`, after taking the cached `prefix` blocks (see `cached_prefix`), can hold `num_tokens`."""
        taken_free = sum(1 for b in prefix if self.ref_counts[b] == 0)
        needed = self.blocks_for(num_tokens) - len(seq.block_table) - len(prefix)
        return needed <= len(self.free_blocks) - taken_free

    def allocate(self, seq: Sequence, num_tokens: int):
        for _ in range(self.blocks_for(num_tokens) - len(seq.block_table)):
            block, _ = self.free_blocks.popitem(last=False)
            key = self.key_of.pop(block, None)
            if key is not None:   # its KV is about to be overwritten
                del self.cached[key]
            self.ref_counts[block] = 1
            seq.block_table.append(block)

    def free(self, seq: Sequence):
        for block in seq.block_table:
            self.ref_counts[block] -= 1
            if self.ref_counts[block] == 0:
                self.free_blocks[block] = None
        seq.block_table = []
        seq.num_registered = 0

    def looks_up(self, seq: Sequence) -> bool:
        """Whether `seq` may take cached blocks (prompt logprobs need every prompt token's logits: no)."""
        return self.enable_caching and seq.cacheable and seq.prompt_logprobs is None

    def cached_prefix(self, seq: Sequence) -> list[int]:
        """The cached blocks holding the longest prefix of a new sequence's tokens, in order (full blocks only,
        and at least its last token left to compute: that one's logits are needed). Looks up, takes nothing."""
        if seq.block_table or not self.looks_up(seq):
            return []
        blocks = []
        for key in self._keys(seq, (seq.num_tokens - 1) // self.block_size):
            block = self.cached.get(key)
            if block is None:
                break
            blocks.append(block)
        return blocks

    def take_prefix(self, seq: Sequence, prefix: list[int]):
        """Give `seq` the cached `prefix` blocks (from `cached_prefix`): their tokens count as computed."""
        for block in prefix:
            if self.ref_counts[block] == 0:
                del self.free_blocks[block]
            self.ref_counts[block] += 1
        seq.block_table = list(prefix)
        seq.num_registered = len(prefix)
        seq.num_computed_tokens = len(prefix) * self.block_size

    def register(self, seq: Sequence):
        """Register the full blocks `seq` has computed since the last call, so that later sequences find them."""
        if not (self.enable_caching and seq.cacheable):
            return
        done, full = seq.num_registered, seq.num_computed_tokens // self.block_size
        for i, key in enumerate(self._keys(seq, full, done), start=done):
            block = seq.block_table[i]
            if key not in self.cached and block not in self.key_of:   # the first block computed with it wins
                self.cached[key] = block
                self.key_of[block] = key
        seq.num_registered = max(done, full)

    def _keys(self, seq: Sequence, num_blocks: int, start: int = 0):
        """The keys of the sequence's blocks start..num_blocks-1: each is the SHA-256 of the key before it and its
        token ids. Hashed once per sequence (kept in `seq.block_keys`: a waiting prompt is looked up every step)."""
        keys, bs = seq.block_keys, self.block_size
        for i in range(start, num_blocks):
            while len(keys) <= i:
                j, parent = len(keys), keys[-1] if keys else b""
                keys.append(hashlib.sha256(parent + array("q", seq.token_ids[j * bs:(j + 1) * bs]).tobytes()).digest())
            yield keys[i]
