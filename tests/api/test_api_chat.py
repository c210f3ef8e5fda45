"""/v1/chat/completions: template, defaults, n, echo, logprobs in the chat shape, streaming order, usage."""
import math

from apiutil import MAX_MODEL_LEN, MODEL, sse_events, tokenize

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]


def test_chat_usage_matches_tokenize_and_default_is_rest_of_context(client, http):
    out = client.chat.completions.create(model=MODEL, messages=MESSAGES, extra_body={"ignore_eos": True})
    prompt = tokenize(http, messages=MESSAGES)
    assert out.object == "chat.completion" and out.id.startswith("chatcmpl-")
    assert out.choices[0].message.role == "assistant" and isinstance(out.choices[0].message.content, str)
    assert out.usage.prompt_tokens == len(prompt)
    assert out.usage.completion_tokens == MAX_MODEL_LEN - len(prompt)       # max_tokens unset: rest of the context
    assert out.choices[0].finish_reason == "length"


def test_max_completion_tokens_and_content_parts(client, http):
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "there"}]}]
    out = client.chat.completions.create(model=MODEL, messages=parts, max_completion_tokens=4, temperature=0,
                                         extra_body={"ignore_eos": True})
    same = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hello\nthere"}],
                                          max_tokens=4, temperature=0, extra_body={"ignore_eos": True})
    assert out.usage.completion_tokens == 4 and out.choices[0].message.content == same.choices[0].message.content


def test_n_seed_and_echo(client):
    out = client.chat.completions.create(model=MODEL, messages=MESSAGES, n=3, max_tokens=5, seed=3, temperature=1.0,
                                         extra_body={"ignore_eos": True})
    assert [c.index for c in out.choices] == [0, 1, 2] and out.usage.completion_tokens == 15
    again = client.chat.completions.create(model=MODEL, messages=MESSAGES, n=3, max_tokens=5, seed=3,
                                           temperature=1.0, extra_body={"ignore_eos": True})
    assert [c.message.content for c in out.choices] == [c.message.content for c in again.choices]
    prefill = MESSAGES + [{"role": "assistant", "content": "Sure:"}]
    echo = client.chat.completions.create(model=MODEL, messages=prefill, max_tokens=3,
                                          extra_body={"echo": True, "add_generation_prompt": False,
                                                      "continue_final_message": True})
    assert echo.choices[0].message.content.startswith("Sure:")


def test_chat_logprobs_shape(client):
    out = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5, logprobs=True,
                                         top_logprobs=2, temperature=0, extra_body={"ignore_eos": True})
    content = out.choices[0].logprobs.content
    assert len(content) == 5
    for item in content:
        assert math.isfinite(item.logprob) and item.logprob <= 0 and item.bytes == list(item.token.encode())
        assert len(item.top_logprobs) == 2 and item.top_logprobs[0].logprob >= item.top_logprobs[1].logprob
        assert item.top_logprobs[0].logprob == item.logprob   # greedy picks the top token
    none = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
    assert none.choices[0].logprobs is None


def test_chat_streaming_order(client, http):
    full = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8, temperature=0,
                                          extra_body={"ignore_eos": True})
    with http.stream("POST", "/v1/chat/completions", json={
            "model": MODEL, "messages": MESSAGES, "max_tokens": 8, "temperature": 0, "ignore_eos": True, "n": 2,
            "stream": True, "stream_options": {"include_usage": True}}) as r:
        assert r.status_code == 200
        events = sse_events(r)
    assert events[-1] == "[DONE]" and events[-2]["choices"] == []
    assert events[-2]["usage"] == {"prompt_tokens": full.usage.prompt_tokens, "completion_tokens": 16,
                                   "total_tokens": full.usage.prompt_tokens + 16}
    chunks = events[:-2]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    for index in (0, 1):
        mine = [c["choices"][0] for c in chunks if c["choices"][0]["index"] == index]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""} and mine[0]["finish_reason"] is None
        assert [m["finish_reason"] for m in mine[1:]] == [None] * (len(mine) - 2) + ["length"]
        assert "".join(m["delta"]["content"] for m in mine[1:]) == full.choices[0].message.content
    streamed = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3, stream=True,
                                                   stream_options={"include_usage": True}))
    assert streamed[0].choices[0].delta.role == "assistant" and streamed[-1].usage.completion_tokens <= 3
