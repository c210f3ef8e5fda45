"""Prompt logprobs (SamplingParams.prompt_logprobs) against `transformers`, through chunked prefill and preemption."""
import pytest
import torch

from engine import LLM, SamplingParams
from tests.test_models import PROMPTS, reference


@pytest.mark.parametrize("engine_opts", [
    dict(num_kv_blocks=64, max_num_batched_tokens=16),           # chunked prefill
    dict(num_kv_blocks=22, max_num_batched_tokens=64),           # a pool so small that preemption happens
], ids=["chunked", "preempt"])
def test_prompt_logprobs_match_transformers(checkpoint, engine_opts):
    path = checkpoint("llama")
    llm = LLM(path, max_model_len=160, block_size=8, **engine_opts)
    outs = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, prompt_logprobs=3))
    hf = reference(path)
    for prompt, out in zip(PROMPTS, outs):
        with torch.no_grad():
            expected = torch.log_softmax(hf(torch.tensor([prompt])).logits[0].float(), -1)
        got = out.prompt_logprobs
        assert len(got) == len(prompt) and got[0] is None
        for i in range(1, len(prompt)):
            entry = got[i]
            assert entry[prompt[i]].logprob == pytest.approx(float(expected[i - 1, prompt[i]]), abs=1e-4)
            assert entry[prompt[i]].rank == int((expected[i - 1] > expected[i - 1, prompt[i]]).sum()) + 1
            top = expected[i - 1].topk(3).indices.tolist()
            assert [t for t, lp in sorted(entry.items(), key=lambda kv: kv[1].rank) if lp.rank <= 3] == top
    if engine_opts["num_kv_blocks"] == 22:
        assert llm.engine.scheduler.num_preemptions > 0


def test_max_tokens_zero_returns_the_prompt_logprobs_only(checkpoint):
    llm = LLM(checkpoint("llama"), max_model_len=160, block_size=8, num_kv_blocks=64)
    prompt = PROMPTS[2]
    full = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=3, prompt_logprobs=0))[0]
    zero = llm.generate([prompt], SamplingParams(max_tokens=0, prompt_logprobs=0))[0]
    assert zero.outputs[0].token_ids == [] and zero.outputs[0].finish_reason == "length"
    assert zero.num_cached_tokens == 0        # prompt logprobs need every prompt token's logits: no cache hits
    assert [e and e[t].logprob for e, t in zip(zero.prompt_logprobs, prompt)] == \
        [e and e[t].logprob for e, t in zip(full.prompt_logprobs, prompt)]
    assert llm.engine.block_manager.num_free_blocks == 64


def test_a_prompt_that_fills_the_context_can_be_scored(checkpoint):
    llm = LLM(checkpoint("llama"), max_model_len=64, block_size=8, num_kv_blocks=16)
    prompt = [5 + i for i in range(64)]
    out = llm.generate([prompt], SamplingParams(max_tokens=0, prompt_logprobs=0))[0]
    assert len(out.prompt_logprobs) == 64 and out.outputs[0].token_ids == []
    with pytest.raises(ValueError):   # generating even one token would not fit
        llm.generate([prompt], SamplingParams(max_tokens=1))


def test_only_the_first_sequence_scores_the_prompt(checkpoint):
    llm = LLM(checkpoint("llama"), max_model_len=160, block_size=8, num_kv_blocks=64)
    out = llm.generate([PROMPTS[3]], SamplingParams(temperature=1.0, seed=3, max_tokens=4, n=3, prompt_logprobs=1))[0]
    assert len(out.prompt_logprobs) == len(PROMPTS[3]) and len(out.outputs) == 3
    llm.engine.add_request("r", PROMPTS[3], SamplingParams(max_tokens=1, n=2, prompt_logprobs=1))
    seqs = llm.engine.requests["r"].seqs
    assert seqs[0].prompt_logprobs == [None] and seqs[1].prompt_logprobs is None
    while llm.engine.has_unfinished_requests():
        llm.engine.step()


def test_rows_recorded_before_a_preemption_are_not_recorded_again():
    from engine.sampler import Sampler
    from engine.sequence import Request, Sequence
    seq = Sequence(0, Request("r", None, list(range(10)), SamplingParams(prompt_logprobs=0)), 0, torch.Generator(),
                   None)
    sampler = Sampler(10, [], str)
    logits = torch.randn(9, 10)
    sampler.record_prompt_logprobs(logits[:4], seq, 0)      # positions 1-4, then the sequence is preempted
    first = list(seq.prompt_logprobs)
    sampler.record_prompt_logprobs(logits[:6], seq, 0)      # recomputed from 0: positions 1-6
    sampler.record_prompt_logprobs(logits[6:], seq, 6)      # positions 7-9
    assert len(seq.prompt_logprobs) == 10 and seq.prompt_logprobs[:5] == first
    expected = torch.log_softmax(logits, -1)
    assert all(seq.prompt_logprobs[i + 1][i + 1].logprob == pytest.approx(float(expected[i, i + 1]))
               for i in range(9))
