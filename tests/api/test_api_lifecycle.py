"""Server lifecycle: 503 while loading, SIGTERM drain (running streams finish, exit 0), engine death mid-stream
(error event + [DONE], /health 503), and a model that fails to load (exit 1)."""
import json
import os
import signal
import threading
import time

import httpx
import pytest
import uvicorn
from apiutil import FAST_ENGINE, ServerProcess, free_port, sse_events

from api.server import build_app
from engine.config import EngineConfig


def _stream(url: str, results: list, first_chunk: threading.Event):
    body = {"prompt": "drain", "max_tokens": 200, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
        lines = []
        for line in r.iter_lines():
            lines.append(line)
            if line.startswith("data: {"):
                first_chunk.set()
    results.append(lines)


def test_loading_503_then_sigterm_drains_and_exits_0(checkpoint):
    proc = ServerProcess(checkpoint("llama"), *FAST_ENGINE, "--shutdown-timeout", "60")
    statuses = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.proc.poll() is None:
        try:
            r = httpx.get(proc.url + "/health", timeout=2)
        except httpx.TransportError:
            time.sleep(0.01)
            continue
        statuses.append(r.status_code)
        if r.status_code == 200:
            break
        assert r.status_code == 503 and "loading" in r.json()["error"]["message"]
        assert r.headers["retry-after"]
    assert statuses[-1] == 200 and 503 in statuses, proc.logs()
    results, started = [], [threading.Event(), threading.Event()]
    threads = [threading.Thread(target=_stream, args=(proc.url, results, ev)) for ev in started]
    for t in threads:
        t.start()
    assert all(ev.wait(30) for ev in started)
    proc.proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    with pytest.raises(httpx.TransportError):      # the listening socket is closed: no new requests
        httpx.post(proc.url + "/v1/completions", json={"prompt": "late", "max_tokens": 1}, timeout=5)
    assert proc.proc.wait(60) == 0, proc.logs()
    for t in threads:
        t.join(10)
    assert len(results) == 2
    for lines in results:
        events = [json.loads(x[6:]) for x in lines if x.startswith("data: {")]
        assert lines[-1] == "data: [DONE]" or lines[-2] == "data: [DONE]"
        assert events[-1]["usage"]["completion_tokens"] == 200
        assert events[-2]["choices"][0]["finish_reason"] == "length"
    assert "draining" in proc.logs()
    proc.stop()


def _stream_until_cut(url: str, outcomes: list, first_chunk: threading.Event):
    body = {"prompt": "slow", "max_tokens": 240, "ignore_eos": True, "stream": True}
    try:
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
            for line in r.iter_lines():
                first_chunk.set()
                if line == "data: [DONE]":
                    outcomes.append("done")
                    return
    except httpx.HTTPError:
        pass
    first_chunk.set()
    outcomes.append("cut")


def test_sigterm_drain_is_bounded_by_shutdown_timeout(checkpoint):
    """One sequence at a time and eight 240-token streams: far more than 0.3 s of work. SIGTERM must still exit 0
    about --shutdown-timeout later, cutting what had not finished."""
    proc = ServerProcess(checkpoint("llama"), *FAST_ENGINE, "--max-num-seqs", "1", "--shutdown-timeout", "0.3")
    proc.wait_ready()
    outcomes, started = [], threading.Event()
    threads = [threading.Thread(target=_stream_until_cut, args=(proc.url, outcomes, started)) for _ in range(8)]
    for t in threads:
        t.start()
    assert started.wait(30)
    time.sleep(0.1)
    t0 = time.monotonic()
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.proc.wait(30) == 0, proc.logs()
    assert time.monotonic() - t0 < 10
    for t in threads:
        t.join(30)
    assert len(outcomes) == 8 and "cut" in outcomes
    assert "timeout graceful shutdown exceeded" in proc.logs()
    proc.stop()


def test_model_that_fails_to_load_exits_1(tmp_path):
    os.makedirs(tmp_path / "broken")
    (tmp_path / "broken" / "config.json").write_text('{"architectures": ["NoSuchForCausalLM"]}')
    proc = ServerProcess(str(tmp_path / "broken"))
    assert proc.proc.wait(120) == 1
    assert "unsupported architecture" in proc.logs()
    proc.stop()


class ThreadServer:
    """The app under uvicorn in a thread of this process, so that a test can break the engine underneath it."""

    def __init__(self, app):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None,
                                                    access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.should_exit = True
        self.thread.join(30)


def test_engine_death_mid_stream_ends_with_error_and_done(checkpoint):
    config = EngineConfig(model=checkpoint("llama"), max_model_len=256, num_kv_blocks=64, block_size=16,
                          decode_threads=1, prefill_threads=1)
    srv = ThreadServer(build_app(config, served_model_name="tiny"))
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(srv.url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        engine = srv.app.state.actserve.engine
        body = {"prompt": "die", "max_tokens": 200, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", srv.url + "/v1/completions", json=body, timeout=60) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            assert next(line for line in lines if line.startswith("data: {"))
            embed = engine.engine.runner.model.model.embed_tokens  # corrupt the weights: the next step fails
            embed.weight.data = embed.weight.data[:0]
            events = sse_events(lines)
        assert events[-1] == "[DONE]"
        assert "error" in events[-2] and events[-2]["error"]["message"]
        health = httpx.get(srv.url + "/health")
        assert health.status_code == 503 and "engine has stopped" in health.json()["error"]["message"]
        late = httpx.post(srv.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1})
        assert late.status_code == 503 and late.json()["error"]["type"] == "service_unavailable_error"
    finally:
        srv.stop()

