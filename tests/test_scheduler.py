"""Continuous batching rules, checked on the scheduler and block manager alone (no tensors involved)."""
import torch

from engine import SamplingParams
from engine.block_manager import BlockManager
from engine.scheduler import Scheduler
from engine.sequence import Request, Sequence, SequenceStatus


def seq(n_prompt, sid=0):
    request = Request(f"r{sid}", None, list(range(n_prompt)), SamplingParams())
    return Sequence(sid, request, 0, torch.Generator(), None)


def run_step(scheduler):
    """What the engine does after the model ran: advance caches, append a token to completing sequences."""
    out = scheduler.schedule()
    for item in out.scheduled:
        done = item.completes
        item.seq.num_computed_tokens += item.num_new_tokens
        if done:
            item.seq.token_ids.append(7)
    return out


def test_long_prompt_is_chunked_and_decodes_keep_flowing():
    sched = Scheduler(BlockManager(100, 4), max_num_seqs=8, max_num_batched_tokens=10)
    short, long = seq(3, 0), seq(25, 1)
    sched.add(short)
    run_step(sched)
    sched.add(long)
    steps = [[(s.seq.seq_id, s.num_new_tokens) for s in run_step(sched).scheduled] for _ in range(4)]
    assert steps == [[(0, 1), (1, 9)], [(0, 1), (1, 9)], [(0, 1), (1, 7)], [(0, 1), (1, 1)]]


def test_token_budget_and_max_num_seqs():
    sched = Scheduler(BlockManager(100, 4), max_num_seqs=2, max_num_batched_tokens=8)
    for i in range(4):
        sched.add(seq(5, i))
    out = run_step(sched)
    assert [(s.seq.seq_id, s.num_new_tokens) for s in out.scheduled] == [(0, 5), (1, 3)]
    assert out.num_tokens == 8
    out = run_step(sched)
    assert [(s.seq.seq_id, s.num_new_tokens) for s in out.scheduled] == [(0, 1), (1, 2)]
    assert len(sched.running) == 2 and len(sched.waiting) == 2


def test_admission_waits_for_free_blocks():
    bm = BlockManager(4, 4)
    sched = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=64)
    sched.add(seq(12, 0))
    sched.add(seq(12, 1))
    out = run_step(sched)
    assert [s.seq.seq_id for s in out.scheduled] == [0]
    assert bm.num_free_blocks == 1


def test_preemption_frees_the_newest_and_requeues_it_first():
    bm = BlockManager(4, 4)
    sched = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=64)
    a, b = seq(8, 0), seq(7, 1)
    sched.add(a)
    sched.add(b)
    run_step(sched)                       # a: 8 tokens in 2 blocks, b: 7 tokens in 2 blocks, pool full
    assert bm.num_free_blocks == 0
    out = run_step(sched)                 # a needs a 3rd block for its 9th token: b is preempted
    assert out.preempted == [b]
    assert b.status == SequenceStatus.WAITING and b.num_computed_tokens == 0 and b.block_table == []
    assert sched.waiting[0] is b and sched.num_preemptions == 1
    assert [s.seq.seq_id for s in out.scheduled] == [0]


def test_finish_returns_blocks():
    bm = BlockManager(10, 4)
    sched = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=64)
    a = seq(9, 0)
    sched.add(a)
    run_step(sched)
    assert bm.num_free_blocks == 7
    sched.finish(a)
    assert bm.num_free_blocks == 10 and not sched.has_work()
