"""/metrics agrees with what the test sent (n > 1, streaming, aborts), and a client disconnect frees the request."""
import socket
import time

import httpx
from apiutil import API_KEY, MODEL, metric, scrape, wait_idle

from engine.metrics import ITL_BUCKETS, REQUEST_LATENCY_BUCKETS, TTFT_BUCKETS


def deltas(before: dict, after: dict, *names_and_labels) -> list[float]:
    return [metric(after, n, **labels) - metric(before, n, **labels) for n, labels in names_and_labels]


def test_counters_agree_with_requests(client, server):
    before = wait_idle(server.url)
    a = client.completions.create(model=MODEL, prompt="metrics one", max_tokens=6, n=2,
                                  extra_body={"ignore_eos": True})
    b = client.completions.create(model=MODEL, prompt="metrics two", max_tokens=20, temperature=0, stop=["\n"])
    chunks = list(client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                 max_tokens=5, stream=True, stream_options={"include_usage": True},
                                                 extra_body={"ignore_eos": True}))
    c = chunks[-1].usage
    after = wait_idle(server.url)
    usages = [a.usage, b.usage, c]
    prompt, gen = deltas(before, after, ("actserve:prompt_tokens_total", {}), ("actserve:generation_tokens_total", {}))
    assert prompt == sum(u.prompt_tokens for u in usages)
    assert gen == sum(u.completion_tokens for u in usages)
    reasons = [a.choices[0].finish_reason, b.choices[0].finish_reason, "length"]
    for reason in ("stop", "length"):
        (d,) = deltas(before, after, ("actserve:request_success_total", {"finished_reason": reason}))
        assert d == reasons.count(reason)
    for hist in ("time_to_first_token_seconds", "e2e_request_latency_seconds", "request_queue_time_seconds"):
        (d,) = deltas(before, after, (f"actserve:{hist}_count", {}))
        assert d == 3, hist
    (itl,) = deltas(before, after, ("actserve:inter_token_latency_seconds_count", {}))
    assert itl == gen - 4                      # every token after the first of each of the 4 sequences
    (steps,) = deltas(before, after, ("actserve:iteration_tokens_total_count", {}))
    assert steps >= 20
    for name, buckets in (("time_to_first_token_seconds", TTFT_BUCKETS), ("inter_token_latency_seconds", ITL_BUCKETS),
                          ("e2e_request_latency_seconds", REQUEST_LATENCY_BUCKETS)):
        les = sorted(float(dict(k[1])["le"]) for k in after if k[0] == f"actserve:{name}_bucket")
        assert les == [float(x) for x in buckets] + [float("inf")]


def _open_stream(server, max_tokens=230) -> socket.socket:
    """Send a streaming completion over a raw socket and read until the first token chunk arrives."""
    body = (f'{{"model": "{MODEL}", "prompt": "disconnect", "max_tokens": {max_tokens}, "ignore_eos": true, '
            f'"stream": true}}').encode()
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Authorization: Bearer " + API_KEY.encode() + b"\r\nContent-Length: " + str(len(body)).encode()
                 + b"\r\n\r\n" + body)
    seen = b""
    while b'"text"' not in seen:
        seen += sock.recv(65536)
    return sock


def test_disconnect_aborts_running_and_waiting_requests(server):
    before = wait_idle(server.url)
    running = [_open_stream(server) for _ in range(4)]            # fills max_num_seqs=4
    blocked = socket.create_connection(("127.0.0.1", server.port))
    body = f'{{"model": "{MODEL}", "prompt": "queued", "max_tokens": 50}}'.encode()
    blocked.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Authorization: Bearer " + API_KEY.encode() + b"\r\nContent-Length: "
                    + str(len(body)).encode() + b"\r\n\r\n" + body)
    deadline = time.monotonic() + 10
    while metric(scrape(server.url), "actserve:num_requests_waiting") < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    m = scrape(server.url)
    assert metric(m, "actserve:num_requests_running") == 4 and metric(m, "actserve:num_requests_waiting") == 1
    assert metric(m, "actserve:kv_cache_usage_perc") > 0
    blocked.close()                                                # a non-streaming client gives up while queued
    for sock in running:                                           # streaming clients go away mid-stream
        sock.close()
    after = wait_idle(server.url)
    assert metric(after, "actserve:num_requests_running") == 0
    assert metric(after, "actserve:num_requests_waiting") == 0
    assert metric(after, "actserve:kv_cache_usage_perc") == 0
    (aborts,) = deltas(before, after, ("actserve:request_success_total", {"finished_reason": "abort"}))
    assert aborts == 5
    assert httpx.get(server.url + "/health").status_code == 200


def test_retrieval_metrics_report_tokens_attended_per_layer(client, server):
    """A long prompt under kv_policy=quest with a small budget: the per-layer gauges show the budget at work."""
    prompt = list(range(5, 5 + 200))
    client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0,
                              extra_body={"ignore_eos": True, "kv_policy": "quest", "kv_budget": 96})
    m = scrape(server.url)
    attended = [v for (name, labels), v in m.items() if name == "actserve:kv_tokens_attended"]
    blocks = [v for (name, labels), v in m.items() if name == "actserve:kv_blocks_selected"]
    assert attended and all(0 < v <= 96 for v in attended), attended
    assert blocks and all(v >= 1 for v in blocks)
    assert ("actserve:memory_rows_read_total", ()) in m


def test_prefix_cache_counters(client, server):
    """The same 100-token prompt twice: the second finds its first 6 blocks of 16 in the prefix cache."""
    prompt = [7 + (37 * i) % 250 for i in range(100)]
    before = wait_idle(server.url)
    outs = [client.completions.create(model=MODEL, prompt=prompt, max_tokens=4, temperature=0,
                                      extra_body={"ignore_eos": True}) for _ in range(2)]
    after = wait_idle(server.url)
    queries, hits = deltas(before, after, ("actserve:prefix_cache_queries_total", {}),
                           ("actserve:prefix_cache_hits_total", {}))
    assert queries == 200 and hits == 96
    assert outs[0].choices[0].text == outs[1].choices[0].text
