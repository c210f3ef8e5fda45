"""Stop rules through the engine: stop strings (also across tokens), stop ids, EOS, ignore_eos, max_tokens."""
from engine import SamplingParams

PROMPT = "The quick brown fox"


def greedy(llm, **kw):
    params = SamplingParams(temperature=0, max_tokens=kw.pop("max_tokens", 40), **kw)
    return llm.generate(PROMPT, params)[0].outputs[0]


def pick_stop_across_tokens(llm, text, token_ids):
    """A 3-character substring of `text` that starts in one token's text and ends in the next."""
    tok = llm.get_tokenizer()
    ends, pos = [], 0
    for i in range(len(token_ids)):
        pos = len(tok.decode(token_ids[: i + 1]))
        ends.append(pos)
    for e in ends[3:-3]:
        candidate = text[e - 1:e + 2]
        if len(candidate) == 3 and "\ufffd" not in candidate and text.find(candidate) == e - 1:
            return candidate, e - 1
    raise AssertionError("no usable stop string in this output")


def test_max_tokens_gives_length(tiny_llm):
    out = greedy(tiny_llm, max_tokens=7, ignore_eos=True)
    assert len(out.token_ids) == 7 and out.finish_reason == "length"


def test_stop_string_across_token_boundary_is_cut_and_not_leaked(tiny_llm):
    full = greedy(tiny_llm, ignore_eos=True)
    stop, at = pick_stop_across_tokens(tiny_llm, full.text, full.token_ids)
    out = greedy(tiny_llm, ignore_eos=True, stop=[stop, "never-there"])
    assert out.finish_reason == "stop" and out.stop_reason == stop
    assert out.text == full.text[:at]
    kept = greedy(tiny_llm, ignore_eos=True, stop=stop, include_stop_str_in_output=True)
    assert kept.text == full.text[:at + len(stop)]


def test_streamed_text_never_shows_a_partial_stop(tiny_llm):
    full = greedy(tiny_llm, ignore_eos=True)
    stop, at = pick_stop_across_tokens(tiny_llm, full.text, full.token_ids)
    engine = tiny_llm.engine
    engine.add_request("stream", PROMPT, SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, stop=[stop]))
    seen = []
    while engine.has_unfinished_requests():
        for out in engine.step():
            seen.append(out.outputs[0].text)
    final = seen[-1]
    assert final == full.text[:at]
    assert len(seen) > 3
    for text in seen:
        assert final.startswith(text)


def test_stop_token_id_ends_generation(tiny_llm):
    full = greedy(tiny_llm, ignore_eos=True)
    stop_id = full.token_ids[5]
    first = full.token_ids.index(stop_id)
    out = greedy(tiny_llm, ignore_eos=True, stop_token_ids=[stop_id])
    assert out.finish_reason == "stop" and out.stop_reason == stop_id
    assert out.token_ids == full.token_ids[: first + 1]


def test_eos_stops_unless_ignored(tiny_llm):
    eos = tiny_llm.get_tokenizer().eos_token_id
    forced = greedy(tiny_llm, logit_bias={eos: 100})
    assert forced.token_ids == [eos] and forced.finish_reason == "stop" and forced.stop_reason is None
    ignored = greedy(tiny_llm, logit_bias={eos: 100}, ignore_eos=True, max_tokens=5)
    assert ignored.token_ids == [eos] * 5 and ignored.finish_reason == "length"


def test_n_sequences_with_seed(tiny_llm):
    params = SamplingParams(n=3, temperature=1.0, seed=11, max_tokens=12, ignore_eos=True)
    a = tiny_llm.generate(PROMPT, params)[0].outputs
    b = tiny_llm.generate([PROMPT, "other prompt"], [params, SamplingParams(seed=3)])[0].outputs
    assert [o.token_ids for o in a] == [o.token_ids for o in b]
    assert len({tuple(o.token_ids) for o in a}) == 3
    assert [o.index for o in a] == [0, 1, 2]
