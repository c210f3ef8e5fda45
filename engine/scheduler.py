"""Continuous batching: which sequences run this step, and how many of their tokens.

Each step hands out a token budget (`max_num_batched_tokens`). Running sequences come first, in arrival order
(a decode needs one token; an unfinished prefill takes what is left of the budget), then waiting ones while the
budget, `max_num_seqs` and free blocks allow. Long prompts are prefilled in chunks across steps. When a running
sequence needs a block and none is free, the most recently admitted one is preempted: its blocks are freed and it
is recomputed from scratch later. With prefix caching, a sequence admitted from the queue first takes the cached
blocks that hold the start of its tokens (engine.block_manager) and computes only the rest; the later sequences
of a request with `n` > 1 wait for the first to compute the prompt, then share its blocks.
"""
from collections import deque
from dataclasses import dataclass

from engine.block_manager import BlockManager
from engine.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledSeq:
    seq: Sequence
    num_new_tokens: int

    @property
    def completes(self) -> bool:
        """Whether this step brings the sequence's cache up to all its tokens (so a token is sampled)."""
        return self.seq.num_computed_tokens + self.num_new_tokens == self.seq.num_tokens


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledSeq]
    preempted: list[Sequence]

    @property
    def num_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int):
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self.prefix_query_tokens = 0   # prompt tokens of requests that looked up the prefix cache
        self.prefix_hit_tokens = 0     # ... found there (counted once per request, when first scheduled)

    def add(self, seq: Sequence):
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        budget = self.max_num_batched_tokens
        scheduled: list[ScheduledSeq] = []
        preempted: list[Sequence] = []
        queue = list(self.running)
        kept: list[Sequence] = []
        while queue and budget > 0:
            seq = queue.pop(0)
            n = self._chunk(seq, budget)
            if n == 0:
                kept.append(seq)
                continue
            total = seq.num_computed_tokens + n
            while not self.block_manager.can_allocate(seq, total) and queue:
                victim = queue.pop()
                self._preempt(victim)
                preempted.append(victim)
            if not self.block_manager.can_allocate(seq, total):
                self._preempt(seq)
                preempted.append(seq)
                continue
            self.block_manager.allocate(seq, total)
            scheduled.append(ScheduledSeq(seq, n))
            kept.append(seq)
            budget -= n
        self.running = kept + queue

        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs and not preempted:
            seq = self.waiting[0]
            if self._waits_for_first_sibling(seq):
                break
            prefix = self.block_manager.cached_prefix(seq)
            start = len(prefix) * self.block_manager.block_size
            n = self._chunk(seq, budget, start)
            if n == 0 or not self.block_manager.can_allocate(seq, start + n, prefix):
                break
            self.waiting.popleft()
            self.block_manager.take_prefix(seq, prefix)
            if seq.request.num_cached_tokens is None:
                seq.request.num_cached_tokens = min(start, seq.num_prompt_tokens)
                if self.block_manager.looks_up(seq):
                    self.prefix_query_tokens += seq.num_prompt_tokens
                    self.prefix_hit_tokens += seq.request.num_cached_tokens
            self.block_manager.allocate(seq, start + n)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            scheduled.append(ScheduledSeq(seq, n))
            budget -= n
        return SchedulerOutput(scheduled, preempted)

    def _waits_for_first_sibling(self, seq: Sequence) -> bool:
        """Whether `seq`, a later sequence of a request with `n` > 1, waits until the first has computed the
        prompt's full blocks, which it then takes from the prefix cache instead of computing them again."""
        if seq.index == 0 or not self.block_manager.looks_up(seq):
            return False
        first = seq.request.seqs[0]
        shared = (seq.num_prompt_tokens - 1) // self.block_manager.block_size * self.block_manager.block_size
        return first.status == SequenceStatus.RUNNING and first.num_computed_tokens < shared

    @staticmethod
    def _chunk(seq: Sequence, budget: int, computed: int | None = None) -> int:
        """Tokens to compute for `seq` within `budget` (after `computed` tokens, by default its computed ones):
        all it needs, or a partial chunk rounded down to its prefill granularity (0 if not even one granule
        fits)."""
        need = seq.num_tokens - (seq.num_computed_tokens if computed is None else computed)
        if need <= budget:
            return need
        return budget - budget % seq.prefill_granularity

    def _preempt(self, seq: Sequence):
        self.block_manager.free(seq)
        seq.num_computed_tokens = 0
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def finish(self, seq: Sequence):
        """Take a finished or aborted sequence out of the queues and free its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.block_manager.free(seq)
