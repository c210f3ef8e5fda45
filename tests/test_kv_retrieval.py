"""KV selection policies: exactness where they must be exact, budget arithmetic, ActQKV's parts, isolation."""
import pytest
import torch
import torch.nn.functional as F

from engine import LLM, SamplingParams
from engine.kv import actqkv
from engine.kv.config import KVConfig
from engine.kv.retrieval_attention import RetrievalContext, RetrievalSlice, retrieval_attention
from engine.kv.state import SequenceKVState
from engine.kv.summaries import received_attention
from engine.layers.rotary import RotaryEmbedding
from engine.models.model_config import ModelConfig
from tests.test_kv_retrieval_steps import TINY_CONFIG

SMALL = dict(kv_budget=192, kv_sink=32, kv_local=64, kv_window=48, block_size=16)


def test_full_policy_through_retrieval_path_equals_plain_attention():
    torch.manual_seed(0)
    bs, n, heads, kv_heads, dim = 16, 150, 4, 2, 16
    blocks = torch.randperm(20)[: -(-n // bs)]
    slots = (blocks[:, None] * bs + torch.arange(bs)).flatten()[:n]
    k_flat, v_flat = torch.randn(20 * bs, kv_heads, dim), torch.randn(20 * bs, kv_heads, dim)
    q = torch.randn(n, heads, dim)
    cfg = ModelConfig.from_dict({"architectures": ["LlamaForCausalLM"], "vocab_size": 8, "hidden_size": 64,
                                 "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": heads})
    ctx = RetrievalContext(received_attention(1, 20 * bs, kv_heads, q.device), RotaryEmbedding(cfg, 256), bs)
    state = SequenceKVState(KVConfig(policy="full", window=40), 1, q.device)
    out = retrieval_attention(q, k_flat, v_flat, RetrievalSlice(0, n, 0, slots, blocks, state), 0, ctx, dim ** -0.5)
    ref = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k_flat[slots].transpose(0, 1)[None],
                                         v_flat[slots].transpose(0, 1)[None], is_causal=True, enable_gqa=True)
    assert (out - ref[0].transpose(0, 1)).abs().max() < 1e-5


def generate(path, prompts, n=12, **kv):
    llm = LLM(path, max_model_len=1024, num_kv_blocks=160, max_num_batched_tokens=256, **{**SMALL, **kv})
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=n, ignore_eos=True))
    return [o.outputs[0].token_ids for o in outs], llm


PROMPTS = [[3 + (i * 37 + j * 11) % 370 for i in range(600 + 50 * j)] for j in range(2)]


@pytest.mark.parametrize("positions", ["original", "bounded", "compressed"])
def test_actqkv_with_budget_beyond_context_equals_full(checkpoint, positions):
    """Every block retrieved: original and compressed positions are then the true ones; bounded ones are not."""
    path = checkpoint("llama")
    full, _ = generate(path, PROMPTS)
    wide, llm = generate(path, PROMPTS, kv_policy="actqkv", kv_budget=100000, kv_positions=positions)
    assert wide == full if positions != "bounded" else len(wide[0]) == 12


@pytest.mark.parametrize("policy", ["streaming", "infllm", "quest", "actqkv"])
def test_policies_stay_within_budget(checkpoint, policy):
    path = checkpoint("llama")
    _, llm = generate(path, PROMPTS[:1], n=4, kv_policy=policy)
    states = list(llm.engine.runner.kv_states.values())
    assert states == []  # released at finish
    engine = llm.engine
    engine.add_request("x", PROMPTS[0], SamplingParams(temperature=0, max_tokens=3, ignore_eos=True))
    while engine.has_unfinished_requests():
        engine.step()
        for state in engine.runner.kv_states.values():
            cfg = state.config
            limit = cfg.budget if policy != "actqkv" else cfg.budget + cfg.blocks_per_layer(16) * 16
            assert max(state.tokens_attended) <= limit
            if policy == "streaming":
                assert max(state.blocks_selected) == 0


@pytest.mark.parametrize("policy", ["streaming", "infllm", "quest", "actqkv"])
def test_policies_run_in_bfloat16(checkpoint, policy):
    """bf16 is the default dtype on CUDA; the block summaries and ActQKV's statistics stay fp32, so scoring must
    mix the two (a GPU run once failed here). With a budget beyond the context, actqkv equals full in bf16 too."""
    path = checkpoint("llama")
    out, _ = generate(path, PROMPTS, kv_policy=policy, dtype="bfloat16")
    assert [len(o) for o in out] == [12, 12]
    if policy == "actqkv":
        wide, _ = generate(path, PROMPTS, kv_policy="actqkv", kv_budget=100000, dtype="bfloat16")
        full, _ = generate(path, PROMPTS, dtype="bfloat16")
        assert wide == full


def test_requests_are_isolated(checkpoint):
    """A request's output does not depend on the content of the request it is interleaved with. (Partners of the
    same length keep every step's shapes equal: batched matmuls are not bit-identical across batch sizes.)"""
    path = checkpoint("llama")
    other = [[5 + (i * 13) % 300 for i in range(len(PROMPTS[1]))]]
    with_b, _ = generate(path, PROMPTS, kv_policy="actqkv")
    with_c, _ = generate(path, PROMPTS[:1] + other, kv_policy="actqkv")
    assert with_b[0] == with_c[0]
    assert with_b[1] != with_c[1]


def test_probe_weights_uniform_in_warmup_then_follow_activation_bias():
    torch.manual_seed(0)
    stats = actqkv.QueryStats()
    q = torch.randn(8, 32)
    assert torch.allclose(actqkv.probe_weights(q, stats, warmup=8), torch.full((8,), 1 / 8))
    q = torch.randn(8, 32)
    q[3] *= 10  # an outlier ("massive activation") token
    w = actqkv.probe_weights(q, stats, warmup=8)
    assert w.sum().item() == pytest.approx(1.0) and int(w.argmax()) == 3
    assert stats.count == 16


def test_query_stats_match_batch_statistics():
    q = torch.randn(300, 16)
    stats = actqkv.QueryStats()
    for chunk in q[:3].split(1) + q[3:297].split(70) + q[297:].split(1):   # decode steps update one query at a time
        stats.update(chunk)
    assert torch.allclose(stats.mean, q.mean(0), atol=1e-5)
    assert torch.allclose(stats.var, q.var(0, unbiased=False), atol=1e-4)


def test_entropy_allocation_moves_blocks_to_flat_layers():
    flat = torch.zeros(100)
    peaked = torch.zeros(100)
    peaked[7] = 1.0
    d_flat, d_peaked = actqkv.normalized_entropy(flat, 0.1), actqkv.normalized_entropy(peaked, 0.1)
    assert d_flat.item() == pytest.approx(1.0) and d_peaked < 0.6
    densities = torch.tensor([d_peaked.item(), 1.0, 1.0, 1.0])
    ks = [actqkv.allocate_blocks(densities, i, 10) for i in range(4)]
    assert ks[0] < 10 < ks[1] and all(5 <= k <= 20 for k in ks)
    assert [actqkv.allocate_blocks(densities, i, 10, host=True) for i in range(4)] == [int(k) for k in ks]
    # without a temperature (tau = 1) the cosine scores look flat: the defect of the released code
    assert actqkv.normalized_entropy(peaked, 1.0) > 0.99


def test_budget_arithmetic():
    cfg = KVConfig(budget=2048, sink=64, local=512)
    k = cfg.blocks_per_layer(32)
    assert cfg.sink_tokens(32) + cfg.local + 32 + k * 32 <= 2048 < cfg.sink_tokens(32) + cfg.local + 32 + (k + 1) * 32
    assert KVConfig(policy="streaming").blocks_per_layer(32) == 0


def feature_major(reprs: torch.Tensor) -> torch.Tensor:
    """[N, R, Hkv, D] <-> [Hkv, D, N, R]: the layout the summaries keep representatives in, and back."""
    return reprs.permute(2, 3, 0, 1)


@pytest.mark.parametrize("per_head", [False, True])
def test_actqkv_scores_are_cosines_against_group_repeated_representatives(per_head):
    from engine.kv.policies import actqkv_scores
    from engine.kv.summaries import unit_representatives
    torch.manual_seed(0)
    q, reprs = torch.randn(1, 8, 16), torch.randn(30, 2, 16)   # 8 query heads over 2 KV heads
    state = SequenceKVState(KVConfig(policy="actqkv", per_head=per_head), 1, q.device)
    units = unit_representatives(reprs[:, None], per_head)     # one representative per block
    got = actqkv_scores(q, feature_major(units), state, 0)
    expanded = reprs.repeat_interleave(4, dim=1)                 # [N, 8, 16]: each KV head's repr for its heads
    if per_head:
        expected = F.cosine_similarity(expanded.view(30, 2, 64), q[0].reshape(2, 64)[None], dim=-1)
    else:
        expected = F.cosine_similarity(expanded.flatten(1), q[0].flatten()[None], dim=-1)
    assert (got - expected).abs().max() < 1e-5


def test_a_block_scores_as_its_best_representative():
    from engine.kv.policies import actqkv_scores, infllm_scores
    from engine.kv.summaries import unit_representatives
    torch.manual_seed(0)
    q, reprs = torch.randn(3, 8, 16), torch.randn(30, 4, 2, 16)   # 4 representatives per block
    units, reprs = feature_major(unit_representatives(reprs, per_head=False)), feature_major(reprs)
    state = lambda: SequenceKVState(KVConfig(policy="actqkv", warmup=10**6), 1, q.device)
    each = torch.stack([actqkv_scores(q, units[..., r:r + 1], state(), 0) for r in range(4)], 1)
    assert torch.allclose(actqkv_scores(q, units, state(), 0), each.amax(1))
    each = torch.stack([infllm_scores(q, reprs[..., r:r + 1]) for r in range(4)], 1)
    assert torch.allclose(infllm_scores(q, reprs), each.amax(1))


def test_retrieval_tables_grow_with_the_block_table_and_are_rebuilt_for_another():
    from engine.model_runner import retrieval_tables
    state = SequenceKVState(KVConfig(policy="actqkv"), 1, torch.device("cpu"))
    table = [7, 3]
    ids, slots = retrieval_tables(state, table, 4)
    assert ids.tolist() == [7, 3] and slots.tolist() == [28, 29, 30, 31, 12, 13, 14, 15]
    table.append(9)                                                # the sequence grew: the tensors are extended
    ids, slots = retrieval_tables(state, table, 4)
    assert ids.tolist() == [7, 3, 9] and slots.tolist()[8:] == [36, 37, 38, 39]
    assert retrieval_tables(state, [5], 4)[1].tolist() == [20, 21, 22, 23]   # not the cached table: rebuilt


def test_representatives_average_the_most_attended_keys_of_each_run_of_the_block():
    from engine.kv.summaries import SequenceSummaries
    from engine.layers.rotary import unrotate_range
    torch.manual_seed(0)
    keys = torch.randn(2, 8, 1, 16)                                # 2 blocks of 8 tokens, 1 KV head
    received = torch.rand(2, 8, 1)
    summaries = SequenceSummaries(1)
    rotary = RotaryEmbedding(ModelConfig.from_dict(TINY_CONFIG), 64)
    summaries.summarize(0, keys, 0, received, rotary, repr_topk=2, repr_count=2)
    reprs = feature_major(summaries.get("repr", 0, 0, 2))
    assert reprs.shape == (2, 2, 1, 16)
    pre = unrotate_range(keys.flatten(0, 1), 0, rotary).view(2, 2, 4, 1, 16)   # blocks, runs, tokens, head, dim
    for b in range(2):
        for run in range(2):
            top = received[b, 4 * run:4 * run + 4, 0].topk(2).indices
            assert torch.allclose(reprs[b, run, 0], pre[b, run, top, 0].mean(0), atol=1e-6)


def test_runs_no_longer_than_repr_topk_average_every_key_without_the_attention_received():
    """The defaults (runs of 4 tokens, repr_topk 8): the attention received is neither recorded nor read, and the
    representatives are what averaging the most attended keys gives."""
    from engine.kv.summaries import SequenceSummaries
    assert not KVConfig(policy="actqkv").needs_received(32) and not KVConfig(policy="infllm").needs_received(16)
    assert KVConfig(policy="actqkv", repr_count=2).needs_received(32) and not KVConfig().needs_received(32)
    from engine.layers.rotary import unrotate_range
    torch.manual_seed(0)
    keys = torch.randn(3, 8, 2, 16)                                # 3 blocks of 8 tokens, 2 KV heads
    rotary = RotaryEmbedding(ModelConfig.from_dict(TINY_CONFIG), 64)
    summaries = SequenceSummaries(1)
    summaries.summarize(0, keys, 8, None, rotary, repr_topk=4, repr_count=2)
    pre = unrotate_range(keys.flatten(0, 1), 8, rotary).view(3, 2, 4, 2, 16)   # blocks, runs, tokens, heads, dim
    assert torch.allclose(feature_major(summaries.get("repr", 0, 0, 3)), pre.mean(2), atol=1e-6)


@pytest.mark.parametrize("per_head", [False, True])
def test_stored_unit_representatives_are_the_representatives_at_unit_norm(per_head):
    from engine.kv.summaries import SequenceSummaries
    torch.manual_seed(0)
    keys, received = torch.randn(5, 8, 2, 16) * 3, torch.rand(5, 8, 2)   # 5 blocks of 8 tokens, 2 KV heads
    summaries = SequenceSummaries(1)
    summaries.summarize(0, keys, 0, received, RotaryEmbedding(ModelConfig.from_dict(TINY_CONFIG), 64),
                        repr_topk=2, repr_count=2, per_head=per_head)
    reprs, units = (feature_major(summaries.get(name, 0, 0, 5)) for name in ("repr", "repr_unit"))
    if not per_head:   # one vector per representative: the KV heads concatenated
        units, reprs = units.flatten(-2), reprs.flatten(-2)
    assert torch.allclose(units.norm(dim=-1), torch.ones(units.shape[:-1]), atol=1e-6)
    assert torch.allclose(F.cosine_similarity(units, reprs, dim=-1), torch.ones(units.shape[:-1]), atol=1e-6)


def test_representatives_split_the_block_evenly():
    from engine.sampling_params import SamplingParamsError
    assert [KVConfig(repr_count=8).representatives(bs) for bs in (32, 16, 12, 2)] == [8, 8, 4, 2]
    assert KVConfig(repr_count=3).representatives(32) == 1
    with pytest.raises(SamplingParamsError, match="kv_repr_count"):
        KVConfig(policy="actqkv", repr_count=0).validate(32)


def test_window_longer_than_local_region_is_rejected():
    from engine.sampling_params import SamplingParamsError
    with pytest.raises(SamplingParamsError, match="kv_window"):
        KVConfig(policy="actqkv", window=600, local=512).validate(32)


def test_question_without_actqkv_is_rejected():
    from engine.sampling_params import SamplingParamsError
    with pytest.raises(SamplingParamsError, match="kv_question"):
        KVConfig(policy="infllm", question_ids=(5, 6)).validate(32)
    KVConfig(policy="actqkv", question_ids=(5, 6)).validate(32)


def test_question_term_adds_weighted_cosine_while_prefilling_only():
    from engine.kv.policies import actqkv_scores
    from engine.kv.summaries import unit_representatives
    torch.manual_seed(0)
    reprs, question = torch.randn(30, 1, 2, 16), torch.randn(8, 16)
    window, single = torch.randn(5, 8, 16), torch.randn(1, 8, 16)
    plain = SequenceKVState(KVConfig(policy="actqkv", warmup=10**6, per_head=False), 1, reprs.device)
    asked = SequenceKVState(KVConfig(policy="actqkv", warmup=10**6, question_weight=4.0, per_head=False), 1,
                            reprs.device)
    asked.question = [question]
    units = feature_major(unit_representatives(reprs, per_head=False))
    term = F.cosine_similarity(reprs[:, 0].repeat_interleave(4, dim=1).flatten(1), question.flatten()[None], dim=-1)
    gain = actqkv_scores(window, units, asked, 0, prefilling=True) - actqkv_scores(window, units, plain, 0, True)
    assert (gain - 4 * term).abs().max() < 1e-5
    one = actqkv_scores(single, units, asked, 0, prefilling=True) - actqkv_scores(single, units, plain, 0, True)
    assert (one - 4 * term).abs().max() < 1e-5          # a one-token prefill chunk gets the term too
    counted = plain.stats[0].count
    assert torch.equal(actqkv_scores(single, units, asked, 0), actqkv_scores(single, units, plain, 0))   # decode
    assert plain.stats[0].count == counted               # a decode query is its own probe: no statistics kept


def test_request_question_reaches_the_selection(checkpoint):
    from engine.kv.question import question_vectors
    path = checkpoint("llama")
    llm = LLM(path, max_model_len=1024, num_kv_blocks=160, max_num_batched_tokens=256, **SMALL)
    engine = llm.engine
    request = engine.add_request("q", PROMPTS[0], SamplingParams(temperature=0, max_tokens=3, ignore_eos=True),
                                 kv={"policy": "actqkv", "question": "What is the pass key?"})
    ids = engine.tokenizer.encode("What is the pass key?", add_special_tokens=False)
    assert request.kv_config.question_ids == tuple(ids)
    engine.step()
    state = engine.runner.kv_states[request.seqs[0].seq_id]
    runner = engine.runner
    expected = question_vectors(runner.model, ids, SMALL["kv_local"], runner.model_config.bos_token_id)
    assert len(state.question) == 2 and all(torch.equal(a, b) for a, b in zip(state.question, expected))
    while engine.has_unfinished_requests():
        engine.step()
    assert len(request.seqs[0].output_token_ids) == 3
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    wide = llm.generate(PROMPTS, params, kv={"policy": "actqkv", "budget": 100000, "question": "the pass key"})
    full, _ = generate(path, PROMPTS)
    assert [o.outputs[0].token_ids for o in wide] == full


def test_trace_records_which_blocks_each_layer_attended(checkpoint):
    llm = LLM(checkpoint("llama"), max_model_len=1024, num_kv_blocks=160, max_num_batched_tokens=256, **SMALL)
    engine = llm.engine
    request = engine.add_request("t", PROMPTS[0], SamplingParams(temperature=0, max_tokens=3, ignore_eos=True),
                                 kv={"policy": "streaming", "trace": True})
    while request.seqs[0].num_output_tokens < 1:
        engine.step()
    state = engine.runner.kv_states[request.seqs[0].seq_id]
    last_block = (len(PROMPTS[0]) - 1) // 16
    for layer in range(2):
        assert state.attends_block(layer, 0, 16)               # sink
        assert state.attends_block(layer, last_block, 16)      # local
        assert not state.attends_block(layer, 10, 16)          # streaming retrieves nothing in between


@pytest.mark.parametrize("positions", ["original", "bounded"])
def test_actqkv_per_kv_head_selection_runs_within_budget(checkpoint, positions):
    outs, llm = generate(checkpoint("llama"), PROMPTS[:1], n=5, kv_policy="actqkv", kv_per_head=True,
                         kv_positions=positions, kv_cutoff="top_p")
    assert len(outs[0]) == 5
    with_shared, _ = generate(checkpoint("llama"), PROMPTS[:1], n=5, kv_policy="actqkv", kv_positions=positions)
    assert len(with_shared[0]) == 5
