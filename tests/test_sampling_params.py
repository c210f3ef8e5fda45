"""Every invalid sampling parameter is rejected with an error that names it."""
import pytest

from engine import SamplingParams, SamplingParamsError

INVALID = [
    ("n", dict(n=0)),
    ("temperature", dict(temperature=-0.1)),
    ("top_p", dict(top_p=0.0)),
    ("top_p", dict(top_p=1.5)),
    ("top_k", dict(top_k=-2)),
    ("min_p", dict(min_p=1.5)),
    ("seed", dict(seed=2**64)),
    ("presence_penalty", dict(presence_penalty=3.0)),
    ("frequency_penalty", dict(frequency_penalty=-2.5)),
    ("repetition_penalty", dict(repetition_penalty=0.0)),
    ("max_tokens", dict(max_tokens=-1)),
    ("min_tokens", dict(min_tokens=5, max_tokens=2)),
    ("stop", dict(stop=[""])),
    ("logprobs", dict(logprobs=21)),
    ("logit_bias", dict(logit_bias={1: 500})),
]


@pytest.mark.parametrize("param,kwargs", INVALID, ids=[f"{p}-{i}" for i, (p, _) in enumerate(INVALID)])
def test_invalid_parameter_is_named(param, kwargs):
    with pytest.raises(SamplingParamsError) as err:
        SamplingParams(**kwargs)
    assert err.value.param == param
    assert param in str(err.value)


def test_vocab_dependent_checks():
    with pytest.raises(SamplingParamsError) as err:
        SamplingParams(stop_token_ids=[999]).validate(vocab_size=100)
    assert err.value.param == "stop_token_ids"
    with pytest.raises(SamplingParamsError) as err:
        SamplingParams(logit_bias={"999": 1.0}).validate(vocab_size=100)
    assert err.value.param == "logit_bias"


def test_normalisation():
    p = SamplingParams(stop="x", top_k=-1, logit_bias={"3": 1})
    assert p.stop == ["x"] and p.top_k == 0 and p.logit_bias == {3: 1.0}


def test_engine_rejects_bad_prompts(tiny_llm):
    engine = tiny_llm.engine
    with pytest.raises(SamplingParamsError) as err:
        engine.add_request("a", [], SamplingParams())
    assert err.value.param == "prompt"
    with pytest.raises(SamplingParamsError) as err:
        engine.add_request("b", [1, 10**6], SamplingParams())
    assert err.value.param == "prompt"
    with pytest.raises(SamplingParamsError) as err:
        engine.add_request("c", [1] * 500, SamplingParams(max_tokens=100))
    assert err.value.param == "input_tokens"
    assert "maximum context length is 512 tokens" in str(err.value)
    assert "you requested 100 output tokens" in str(err.value)
    assert not engine.has_unfinished_requests()
