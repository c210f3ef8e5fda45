"""/v1/completions through the official openai client and raw HTTP: every parameter, streaming order, usage."""
import math

import httpx
import pytest
from apiutil import MAX_MODEL_LEN, MODEL, sse_events, tokenize


def test_health_version_models(client, http, server):
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    assert isinstance(httpx.get(server.url + "/version").json()["version"], str)
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL]
    assert models[0].model_extra["max_model_len"] == MAX_MODEL_LEN
    assert client.models.retrieve(MODEL).id == MODEL
    schema = httpx.get(server.url + "/openapi.json").json()
    assert {"/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"} <= set(schema["paths"])


def test_completion_usage_matches_tokenize(client, http):
    out = client.completions.create(model=MODEL, prompt="The quick brown fox", max_tokens=7,
                                    extra_body={"ignore_eos": True})
    assert out.object == "text_completion" and out.id.startswith("cmpl-") and out.model == MODEL
    assert out.usage.prompt_tokens == len(tokenize(http, prompt="The quick brown fox"))
    assert out.usage.completion_tokens == 7 and out.usage.total_tokens == out.usage.prompt_tokens + 7
    assert out.choices[0].finish_reason == "length"


def test_default_max_tokens_is_16(client):
    out = client.completions.create(model=MODEL, prompt="count", extra_body={"ignore_eos": True})
    assert out.usage.completion_tokens == 16


def test_greedy_and_seeded_sampling_are_reproducible(client):
    def run(**kw):
        return client.completions.create(model=MODEL, prompt="seeds", max_tokens=12, **kw).choices[0].text
    assert run(temperature=0) == run(temperature=0)
    assert run(temperature=1.0, seed=7) == run(temperature=1.0, seed=7)
    seeded = {run(temperature=1.5, seed=s, top_p=0.95, extra_body={"top_k": 50, "min_p": 0.01}) for s in range(4)}
    assert len(seeded) > 1


def test_n_and_prompt_lists_and_token_ids(client, http):
    out = client.completions.create(model=MODEL, prompt=["a b", "c d e"], n=2, max_tokens=3, seed=1,
                                    extra_body={"ignore_eos": True})
    assert sorted(c.index for c in out.choices) == [0, 1, 2, 3]
    assert out.usage.completion_tokens == 12
    assert out.usage.prompt_tokens == len(tokenize(http, prompt="a b")) + len(tokenize(http, prompt="c d e"))
    ids = tokenize(http, prompt="hello world")
    by_ids = client.completions.create(model=MODEL, prompt=ids, max_tokens=5, temperature=0)
    by_text = client.completions.create(model=MODEL, prompt="hello world", max_tokens=5, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text
    two = client.completions.create(model=MODEL, prompt=[ids, ids[:2]], max_tokens=2, temperature=0)
    assert len(two.choices) == 2 and two.usage.prompt_tokens == len(ids) + 2


def test_echo_and_zero_max_tokens(client):
    out = client.completions.create(model=MODEL, prompt="Echo me", echo=True, max_tokens=3, temperature=0)
    plain = client.completions.create(model=MODEL, prompt="Echo me", max_tokens=3, temperature=0)
    assert out.choices[0].text == "Echo me" + plain.choices[0].text
    zero = client.completions.create(model=MODEL, prompt="Echo me", echo=True, max_tokens=0)
    assert zero.choices[0].text == "Echo me" and zero.usage.completion_tokens == 0


def test_logprobs_legacy_shape(client):
    out = client.completions.create(model=MODEL, prompt="log probs", max_tokens=6, logprobs=3, temperature=0,
                                    extra_body={"ignore_eos": True})
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    assert all(math.isfinite(v) and v <= 0 for v in lp.token_logprobs)
    for chosen, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert 1 <= len(top) <= 3
        assert max(top.values()) == pytest.approx(chosen, abs=1e-5)   # greedy: the chosen token is the top one
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0


def test_stop_strings_and_stop_token_ids(client, http):
    base = client.completions.create(model=MODEL, prompt="stop test", max_tokens=20, temperature=0,
                                     extra_body={"ignore_eos": True}).choices[0]
    stop = next(base.text[i:i + 2] for i in range(3, len(base.text) - 2) if base.text[i:i + 2].strip())
    cut = client.completions.create(model=MODEL, prompt="stop test", max_tokens=20, temperature=0, stop=[stop],
                                    extra_body={"ignore_eos": True}).choices[0]
    assert cut.finish_reason == "stop" and cut.model_extra["stop_reason"] == stop
    assert cut.text == base.text[:base.text.index(stop)]
    token = tokenize(http, prompt="fox", add_special_tokens=False)[0]
    out = client.completions.create(model=MODEL, prompt="stop test", max_tokens=20, logit_bias={str(token): 100},
                                    extra_body={"stop_token_ids": [token], "min_tokens": 2})
    assert out.choices[0].finish_reason == "stop" and out.choices[0].model_extra["stop_reason"] == token
    assert out.usage.completion_tokens == 3   # min_tokens holds the stop token back for two tokens


def test_logit_bias_penalties_and_extras(client, http):
    token = tokenize(http, prompt="fox", add_special_tokens=False)[0]
    out = client.completions.create(model=MODEL, prompt="bias", max_tokens=5, temperature=0,
                                    logit_bias={str(token): 100}, user="someone",
                                    extra_body={"ignore_eos": True, "unknown_field": 1, "kv_policy": "full"})
    piece = http.post("/detokenize", json={"model": MODEL, "tokens": [token]}).json()["prompt"]
    assert piece and out.choices[0].text == piece * 5
    pen = client.completions.create(model=MODEL, prompt="bias", max_tokens=8, temperature=0, presence_penalty=2,
                                    frequency_penalty=2, extra_body={"repetition_penalty": 1.5, "ignore_eos": True,
                                                                     "min_tokens": 8})
    plain = client.completions.create(model=MODEL, prompt="bias", max_tokens=8, temperature=0,
                                      extra_body={"ignore_eos": True})
    assert pen.usage.completion_tokens == 8 and pen.choices[0].text != plain.choices[0].text


def test_streaming_order_and_usage(client, http):
    full = client.completions.create(model=MODEL, prompt="stream me", max_tokens=10, temperature=0,
                                     extra_body={"ignore_eos": True})
    with http.stream("POST", "/v1/completions", json={
            "model": MODEL, "prompt": "stream me", "max_tokens": 10, "temperature": 0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    usage = events[-2]
    assert usage["choices"] == [] and usage["usage"] == full.usage.model_dump(exclude_none=True) | usage["usage"]
    assert usage["usage"]["completion_tokens"] == 10
    chunks = events[:-2]
    assert all(c["object"] == "text_completion" and len(c["choices"]) == 1 for c in chunks)
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * (len(chunks) - 1) + ["length"]
    assert "".join(c["choices"][0]["text"] for c in chunks) == full.choices[0].text
    stream = client.completions.create(model=MODEL, prompt="stream me", max_tokens=10, temperature=0, stream=True,
                                       n=2, extra_body={"ignore_eos": True})
    texts = {0: "", 1: ""}
    for chunk in stream:
        for c in chunk.choices:
            texts[c.index] += c.text
    assert texts[0] == texts[1] == full.choices[0].text
    no_usage = list(client.completions.create(model=MODEL, prompt="x", max_tokens=2, stream=True))
    assert all(c.usage is None for c in no_usage)


def test_per_request_kv_policy(client, http):
    """kv_policy / kv_budget / kv_positions select this request's KV retrieval; a long prompt runs under it."""
    prompt = list(range(5, 5 + MAX_MODEL_LEN - 40))
    full = client.completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0,
                                     extra_body={"ignore_eos": True})
    wide = client.completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0,
                                     extra_body={"ignore_eos": True, "kv_policy": "actqkv", "kv_budget": 100000})
    assert wide.choices[0].text == full.choices[0].text
    for policy, positions in (("streaming", "bounded"), ("infllm", "compressed"), ("quest", "bounded")):
        out = client.completions.create(model=MODEL, prompt=prompt, max_tokens=4, temperature=0,
                                        extra_body={"ignore_eos": True, "kv_policy": policy, "kv_budget": 160,
                                                    "kv_positions": positions})
        assert out.usage.completion_tokens == 4
    bad = http.post("/v1/completions", json={"model": MODEL, "prompt": "x", "kv_policy": "magic"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "kv_policy"


def test_per_request_mlp_sparsity(client, http):
    """mlp_sparsity is validated against the model: relu needs ReLU MLPs, teal/cats need a calibration."""
    for spec in ("relu", "teal:0.5"):
        bad = http.post("/v1/completions", json={"model": MODEL, "prompt": "x", "mlp_sparsity": spec})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "mlp_sparsity"
    out = client.completions.create(model=MODEL, prompt="hello", max_tokens=3, extra_body={"mlp_sparsity": "dense"})
    assert out.usage.completion_tokens >= 1


def test_echo_with_logprobs_scores_the_prompt(client):
    """lm-evaluation-harness's loglikelihood request: echo + logprobs gives the prompt's tokens logprobs too."""
    prompt = [7 + (29 * i) % 250 for i in range(12)]
    out = client.completions.create(model=MODEL, prompt=prompt, echo=True, logprobs=2, max_tokens=3, temperature=0,
                                    extra_body={"ignore_eos": True})
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 12 + 3
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(v <= 0 for v in lp.token_logprobs[1:]) and all(1 <= len(t) <= 3 for t in lp.top_logprobs[1:])
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(15)]
    # the same prompt scored without generating, and streamed: the same numbers
    zero = client.completions.create(model=MODEL, prompt=prompt, echo=True, logprobs=2, max_tokens=0)
    assert zero.choices[0].logprobs.token_logprobs == lp.token_logprobs[:12] and zero.usage.completion_tokens == 0
    chunks = list(client.completions.create(model=MODEL, prompt=prompt, echo=True, logprobs=2, max_tokens=3,
                                            temperature=0, stream=True, extra_body={"ignore_eos": True}))
    streamed = [v for c in chunks if c.choices and c.choices[0].logprobs for v in c.choices[0].logprobs.token_logprobs]
    offsets = [v for c in chunks if c.choices and c.choices[0].logprobs for v in c.choices[0].logprobs.text_offset]
    assert streamed == lp.token_logprobs and offsets == lp.text_offset


def test_prompt_logprobs_field(http):
    """vLLM's `prompt_logprobs` extra: per choice in completions, top level in chat; the same numbers as echo."""
    prompt = [9 + (31 * i) % 250 for i in range(10)]
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 2, "temperature": 0, "prompt_logprobs": 2}
    choice = http.post("/v1/completions", json=body).json()["choices"][0]
    got = choice["prompt_logprobs"]
    assert len(got) == 10 and got[0] is None
    assert all(str(t) in entry and 2 <= len(entry) <= 3 for t, entry in zip(prompt[1:], got[1:]))
    echoed = http.post("/v1/completions", json={**body, "prompt_logprobs": None, "echo": True, "logprobs": 2}).json()
    assert [e[str(t)]["logprob"] for t, e in zip(prompt[1:], got[1:])] == \
        echoed["choices"][0]["logprobs"]["token_logprobs"][1:10]
    chat = http.post("/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                                   "max_tokens": 2, "prompt_logprobs": 0}).json()
    assert chat["prompt_logprobs"][0] is None and len(chat["prompt_logprobs"]) == chat["usage"]["prompt_tokens"]
    for bad in ({"prompt_logprobs": 21}, {"prompt_logprobs": 1, "stream": True}):
        r = http.post("/v1/completions", json={**body, **bad})
        assert r.status_code == 400 and r.json()["error"]["param"] == "prompt_logprobs", r.text
