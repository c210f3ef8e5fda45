"""Every error status in the nested OpenAI shape: 400 (incl. the context-length message), 401, 404, 405, 413, 429."""
import asyncio
import re

import httpx
import openai
import pytest
from apiutil import API_KEY, MAX_MODEL_LEN, MODEL, tokenize


def assert_error(r: httpx.Response, status: int, param: str | None = "any") -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param != "any":
        assert err["param"] == param, err
    return err


BAD = [
    ({"temperature": -1}, "temperature"), ({"top_p": 2}, "top_p"), ({"top_k": -5}, "top_k"), ({"min_p": 1.5}, "min_p"),
    ({"n": 0}, "n"), ({"n": 10**6}, "n"), ({"max_tokens": -1}, "max_tokens"), ({"logprobs": 50}, "logprobs"),
    ({"presence_penalty": 5}, "presence_penalty"), ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"seed": 2**70}, "seed"), ({"logit_bias": {"x": 1}}, "logit_bias"), ({"logit_bias": {"5": 500}}, "logit_bias"),
    ({"stop_token_ids": [10**9]}, "stop_token_ids"), ({"stop": [""]}, "stop"), ({"temperature": "hot"}, "temperature"),
    ({"prompt": []}, "prompt"), ({"prompt": ""}, "prompt"), ({"prompt": [[1, 2], []]}, "prompt"),
    ({"prompt": [10**9]}, "prompt"), ({"prompt": [-1]}, "prompt"), ({"prompt": None}, "prompt"),
    ({"stream_options": {"include_usage": True}}, None), ({"echo": True, "logprobs": 21}, "logprobs"),
    ({"prompt_logprobs": -1}, "prompt_logprobs"), ({"prompt_logprobs": "x"}, "prompt_logprobs"),
    ({"min_tokens": 20, "max_tokens": 5}, "min_tokens"), ({"max_tokens": 0, "prompt": [5] * 300}, "input_tokens"),
]


@pytest.mark.parametrize("change,param", BAD, ids=[str(b[0])[:40] for b in BAD])
def test_invalid_completion_parameters_are_400(http, change, param):
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 2, **change}
    err = assert_error(http.post("/v1/completions", json=body), 400, param)
    assert err["type"] == "invalid_request_error"


def test_invalid_chat_and_bodies_are_400(http):
    assert_error(http.post("/v1/chat/completions", json={"model": MODEL, "messages": []}), 400, "messages")
    assert_error(http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "x"}}]}]}), 400, "messages.0.content")
    assert_error(http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}],
                                                          "top_logprobs": 2}), 400, "top_logprobs")
    assert_error(http.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"}),
                 400)
    assert_error(http.post("/v1/completions", content=b'{"prompt": "x", "temperature": NaN}',
                           headers={"content-type": "application/json"}), 400, "temperature")
    assert_error(http.post("/v1/completions", json=[1, 2]), 400)
    assert_error(http.post("/tokenize", json={"model": MODEL}), 400)
    assert_error(http.post("/detokenize", json={"model": MODEL, "tokens": [10**7]}), 400, "tokens")


def test_context_length_message_matches_vllm(client, http):
    prompt = "word " * 200
    n = len(tokenize(http, prompt=prompt))
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt=prompt, max_tokens=100)
    err = info.value.body
    assert err["param"] == "input_tokens" and err["code"] == "context_length_exceeded"
    assert err["message"] == (
        f"This model's maximum context length is {MAX_MODEL_LEN} tokens. However, you requested 100 output tokens "
        f"and your prompt contains at least {n} input tokens, for a total of at least {n + 100} tokens. Please "
        f"reduce the length of the input prompt or the number of requested output tokens. "
        f"(parameter=input_tokens, value={n})")
    assert int(re.search(r"maximum context length is (\d+)", err["message"]).group(1)) == MAX_MODEL_LEN
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "word " * 300}])


def test_auth_401_and_open_endpoints(server):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        assert_error(httpx.post(server.url + "/v1/completions", json={"prompt": "x"}, headers=headers), 401)
        assert_error(httpx.get(server.url + "/v1/models", headers=headers), 401)
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    assert httpx.get(server.url + "/health").status_code == 200
    assert httpx.get(server.url + "/metrics").status_code == 200


def test_unknown_model_404_and_unknown_route(client, http):
    with pytest.raises(openai.NotFoundError) as info:
        client.completions.create(model="gpt-9", prompt="x", max_tokens=1)
    assert info.value.body["message"] == "The model `gpt-9` does not exist." and info.value.body["param"] == "model"
    assert_error(http.get("/v1/models/gpt-9"), 404)
    assert_error(http.get("/v1/nothing-here"), 404)
    assert_error(http.get("/v1/completions"), 405)


def test_body_too_large_413(http):
    assert_error(http.post("/v1/completions", json={"model": MODEL, "prompt": "x" * (33 * 2**20)}), 413)

    def chunked():
        for _ in range(40):
            yield b" " * 2**20
    assert_error(http.post("/v1/completions", content=chunked(), headers={"content-type": "application/json"}),
                 413)


def test_request_id_is_echoed(http):
    r = http.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 1},
                  headers={"X-Request-Id": "abc-123"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "abc-123"


def test_burst_beyond_queue_bound_gets_429(server):
    """max_num_seqs 4 + 4 queued: a burst of 24 long requests must see 429s with Retry-After, and no 5xx."""
    async def burst():
        async with httpx.AsyncClient(base_url=server.url, timeout=60,
                                     headers={"Authorization": f"Bearer {API_KEY}"},
                                     limits=httpx.Limits(max_connections=32)) as c:
            body = {"model": MODEL, "prompt": "burst", "max_tokens": 120, "ignore_eos": True}
            return await asyncio.gather(*(c.post("/v1/completions", json=body) for _ in range(24)))
    responses = asyncio.run(burst())
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429} and 429 in statuses and 200 in statuses
    for r in responses:
        if r.status_code == 429:
            assert r.headers["retry-after"] == "1"
            assert_error(r, 429)["type"] == "rate_limit_error"
    assert httpx.get(server.url + "/health").status_code == 200


def test_hostile_inputs_never_kill_the_engine(http, server):
    user = [{"role": "user", "content": "x"}]
    bodies = [
        ("/v1/chat/completions", {"messages": user, "chat_template_kwargs": {"tokenize": True, "return_dict": True}}),
        ("/v1/chat/completions", {"messages": user, "add_generation_prompt": True, "continue_final_message": True}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": None}], "max_tokens": 1}),
        ("/v1/completions", {"prompt": [0, 1, 2], "max_tokens": 1, "seed": 2**63 - 1, "n": 3}),
        ("/v1/completions", {"prompt": "x", "max_tokens": 2, "temperature": 1e-300, "top_k": 10**12, "top_p": 1e-9}),
        ("/v1/completions", {"prompt": "x", "max_tokens": 2, "temperature": 1e30, "stop": ["a"] * 200}),
        ("/v1/completions", {"prompt": [1] * 256, "max_tokens": None}),
        ("/v1/completions", {"prompt": "x", "logit_bias": {" 5": -100, "6": 100}, "max_tokens": 2}),
        ("/v1/completions", {"prompt": "x", "stop_token_ids": [-1]}),
        ("/v1/completions", {"prompt": "x", "echo": True, "max_tokens": 0, "stream": True}),
    ]
    for path, body in bodies:
        r = http.post(path, json=body)
        assert r.status_code in (200, 400), (body, r.status_code, r.text)
    assert httpx.get(server.url + "/health").status_code == 200
    assert http.post("/v1/completions", json={"prompt": "alive", "max_tokens": 2}).status_code == 200
