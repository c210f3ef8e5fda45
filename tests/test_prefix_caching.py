"""Prefix caching: blocks registered under their tokens and everything before them, shared by reference count, and
outputs equal to an engine that computes every prompt."""
import pytest
import torch

from engine import LLM, SamplingParams
from engine.block_manager import BlockManager
from engine.sequence import Request, Sequence


def seq(ids, kv_config=None, mlp=("dense", None)):
    return Sequence(0, Request("r", None, list(ids), SamplingParams(), kv_config=kv_config, mlp_sparsity=mlp), 0,
                    torch.Generator(), None)


def computed(bm, s, n):
    """`s` computes its first `n` tokens (as a step would) and registers its full blocks."""
    bm.allocate(s, n)
    s.num_computed_tokens = n
    bm.register(s)


def test_lookup_follows_the_registered_prefix():
    bm = BlockManager(8, 4, enable_caching=True)
    a = seq(range(10))
    computed(bm, a, 10)                                   # blocks 0, 1 full and registered; block 2 partial
    assert bm.cached_prefix(seq(list(range(10)) + [50, 51, 52])) == [0, 1]
    assert bm.cached_prefix(seq(range(8))) == [0]         # the last token is always computed
    assert bm.cached_prefix(seq([99] + list(range(1, 10)))) == []
    assert bm.cached_prefix(seq([0, 1, 2, 3, 99, 5, 6, 7, 8])) == [0]   # a later block differs
    assert bm.cached_prefix(seq(range(10), mlp=("teal", 0.5))) == []   # not cacheable
    assert BlockManager(8, 4).cached_prefix(seq(range(10))) == []      # caching off


def test_shared_blocks_are_counted_and_stay_cached_when_freed():
    bm = BlockManager(8, 4, enable_caching=True)
    a = seq(range(10))
    computed(bm, a, 10)
    b = seq(list(range(10)) + [50, 51, 52])
    prefix = bm.cached_prefix(b)
    bm.take_prefix(b, prefix)
    assert b.block_table == [0, 1] and b.num_computed_tokens == 8 and bm.ref_counts[:3] == [2, 2, 1]
    computed(bm, b, 13)                                   # the chain continues from the shared blocks
    assert b.block_table == [0, 1, 3, 4] and len(b.block_keys) == 3 and bm.key_of[3] == b.block_keys[2]
    bm.free(a)
    assert bm.ref_counts[:3] == [1, 1, 0] and 2 in bm.free_blocks
    bm.free(b)
    assert bm.num_free_blocks == 8 and bm.cached_prefix(seq(list(range(10)) + [50, 51, 52, 53])) == [0, 1, 3]
    # never-used blocks go out first; a cached block handed out again leaves the cache
    c = seq(range(100, 120))
    bm.allocate(c, 12)
    assert c.block_table == [5, 6, 7]
    bm.allocate(c, 20)
    assert c.block_table == [5, 6, 7, 2, 0] and bm.cached_prefix(seq(range(10))) == []
    assert 1 in bm.key_of and 0 not in bm.key_of


def test_can_allocate_counts_the_free_cached_blocks_it_takes():
    bm = BlockManager(4, 4, enable_caching=True)
    a = seq(range(9))
    computed(bm, a, 9)
    bm.free(a)
    b = seq(list(range(8)) + [70] * 8)                    # 16 tokens, 8 of them cached (blocks 0, 1)
    prefix = bm.cached_prefix(b)
    assert prefix == [0, 1]
    assert bm.can_allocate(b, 16, prefix)                 # 2 cached + 2 new of the 4
    assert not bm.can_allocate(b, 17, prefix)             # 3 new: only 2 free besides the cached ones


@pytest.fixture(scope="module")
def engines(checkpoint):
    path = checkpoint("llama")
    opts = dict(max_model_len=256, block_size=8, num_kv_blocks=64, max_num_batched_tokens=32)
    return LLM(path, **opts), LLM(path, enable_prefix_caching=False, **opts)


GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
DOCUMENT = [5 + (13 * i) % 300 for i in range(70)]


def test_a_cached_prefix_gives_the_tokens_of_a_full_prefill(engines):
    cached, plain = engines
    first = cached.generate([DOCUMENT], GREEDY)[0]
    assert first.num_cached_tokens == 0
    answer = first.outputs[0].token_ids
    follow_ups = [DOCUMENT + [7, 8, 9], DOCUMENT + answer + [11, 12]]   # another question; the next turn
    scheduler = cached.engine.scheduler
    counts = (scheduler.prefix_query_tokens, scheduler.prefix_hit_tokens)
    outs = cached.generate(follow_ups, GREEDY)
    assert [o.num_cached_tokens for o in outs] == [64, 72]             # 8 prompt blocks; 9 with the answer's
    assert (scheduler.prefix_query_tokens - counts[0], scheduler.prefix_hit_tokens - counts[1]) == (73 + 80, 136)
    expected = plain.generate(follow_ups, GREEDY)
    assert [o.outputs[0].token_ids for o in outs] == [o.outputs[0].token_ids for o in expected]
    assert all(o.num_cached_tokens == 0 for o in expected)
    assert cached.engine.block_manager.num_free_blocks == 64


def test_requests_running_together_share_blocks(engines):
    cached, plain = engines
    prompts = [DOCUMENT[:40] + [200 + i] * 30 for i in range(3)]
    cached.generate([prompts[0]], GREEDY)
    outs = cached.generate(prompts, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, n=2))
    assert [o.num_cached_tokens for o in outs] == [64, 40, 40]
    expected = plain.generate(prompts, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, n=2))
    assert [[c.token_ids for c in o.outputs] for o in outs] == [[c.token_ids for c in o.outputs] for o in expected]
    assert cached.engine.block_manager.num_free_blocks == 64


def test_selection_policies_neither_use_nor_fill_the_cache(engines):
    cached, _ = engines
    prompt = [9 + (11 * i) % 300 for i in range(90)]
    before = dict(cached.engine.block_manager.cached)
    first, second = (cached.generate([prompt], GREEDY, kv={"policy": "streaming", "sink": 8, "local": 32,
                                                            "budget": 64, "window": 16})[0] for _ in range(2))
    assert first.num_cached_tokens == second.num_cached_tokens == 0
    assert first.outputs[0].token_ids == second.outputs[0].token_ids
    assert cached.engine.block_manager.cached.keys() <= before.keys()   # their blocks may evict, never add


def test_the_sequences_of_one_request_compute_its_prompt_once(checkpoint, engines):
    _, plain = engines
    # a step budget that would admit all three sequences at once
    cached = LLM(checkpoint("llama"), max_model_len=256, block_size=8, num_kv_blocks=64, max_num_batched_tokens=512)
    prompt = [3 + (17 * i) % 300 for i in range(70)]
    params = SamplingParams(temperature=1.0, seed=5, max_tokens=8, ignore_eos=True, n=3)
    computed = []
    step = cached.engine.step

    def counting_step():
        out = step()
        computed.append(cached.engine.last_step_tokens)
        return out

    cached.engine.step = counting_step
    out = cached.generate([prompt], params)[0]
    # the first sequence computes the 70 prompt tokens; the others only the 6 after the 8 full blocks it shares
    assert sum(computed) == 70 + 2 * 6 + 3 * 7
    expected = plain.generate([prompt], params)[0]
    assert [c.token_ids for c in out.outputs] == [c.token_ids for c in expected.outputs]
