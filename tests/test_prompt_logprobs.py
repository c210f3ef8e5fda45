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
