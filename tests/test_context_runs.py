"""The plain attention paths reading a sequence's cached keys in place (engine.layers.context_runs)."""
import pytest
import torch

from engine import LLM, SamplingParams
from engine.layers import context_runs as runs_module
from engine.layers.context_runs import context_runs
from tests.test_models import PROMPTS, hf_greedy, our_logits, reference


def test_runs_and_the_rest(monkeypatch):
    # blocks of 4 tokens; runs of >= 12 tokens are read in place
    monkeypatch.setattr(runs_module, "MIN_RUN_TOKENS", 12)
    table = [4, 5, 6, 7, 1, 9, 10, 11, 12, 13, 30]
    got = context_runs(table, 37, 4)   # the last block (13) holds one token
    assert got.runs == [(16, 16), (36, 17)]
    assert got.rest.tolist() == [4, 5, 6, 7]
    assert context_runs(table, 11, 4) is None             # too few tokens
    assert context_runs([3, 1, 8, 6, 0], 20, 4) is None   # no two blocks consecutive
    whole = context_runs(list(range(5, 15)), 40, 4)
    assert whole.runs == [(20, 40)] and whole.rest is None


@pytest.fixture
def short_runs(monkeypatch):
    """Runs of 16 tokens (two blocks of 8) are read in place; counts the pieces so read."""
    monkeypatch.setattr(runs_module, "MIN_RUN_TOKENS", 16)
    calls = []
    original = runs_module.context_pieces

    def counting(q_heads, k_flat, v_flat, context, buffers, scale):
        calls.append(len(context.runs))
        return original(q_heads, k_flat, v_flat, context, buffers, scale)

    monkeypatch.setattr("engine.layers.attention.context_pieces", counting)
    return calls


@pytest.mark.parametrize("variant", ["llama", "qwen2", "mistral-window"])
@pytest.mark.parametrize("chunk", [None, 7, 1])
def test_logits_read_in_place_match_transformers(checkpoint, variant, chunk, short_runs):
    path = checkpoint(variant)
    ids = torch.randint(3, 384, (1, 60), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = reference(path)(ids).logits[0]
    # two runs of 3 blocks read in place, the lone blocks 30 and 0 gathered
    got = our_logits(path, ids[0].tolist(), chunk, block_table=[10, 11, 12, 30, 20, 21, 22, 0])
    assert (got - expected).abs().max().item() <= 1e-4
    if chunk is not None and variant != "mistral-window":   # its window hides part of the context
        assert short_runs and max(short_runs) == 2


def test_batched_greedy_in_place_matches_transformers(checkpoint, short_runs):
    path = checkpoint("llama")
    llm = LLM(path, max_model_len=160, block_size=8, num_kv_blocks=64, max_num_batched_tokens=24)
    outs = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=24, ignore_eos=True))
    hf = reference(path)
    for prompt, out in zip(PROMPTS, outs):
        assert out.outputs[0].token_ids == hf_greedy(hf, prompt, 24)
    assert short_runs
