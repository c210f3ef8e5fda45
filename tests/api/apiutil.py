"""Helpers of the API tests: the real server (`actserve serve`) in a subprocess on a free loopback port, and
/metrics scraping."""
import json
import os
import socket
import subprocess
import sys
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

API_KEY = "test-key"
MODEL = "tiny"
MAX_MODEL_LEN = 256
FAST_ENGINE = ["--max-model-len", str(MAX_MODEL_LEN), "--num-kv-blocks", "64", "--block-size", "16",
               "--decode-threads", "1", "--prefill-threads", "1"]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, model_dir: str, *args: str, env: dict | None = None, log_path: str | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path or f"/tmp/actserve-test-{self.port}.log"
        self.log = open(self.log_path, "w")
        cmd = [sys.executable, "-m", "api.cli", "serve", "--model", model_dir, "--port", str(self.port),
               "--disable-access-log", *args]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})

    def wait_ready(self, timeout: float = 180.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"server not healthy after {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        self.log.flush()
        with open(self.log_path) as f:
            return f.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """/metrics as {(sample name, sorted labels without model_name): value}."""
    text = httpx.get(url + "/metrics", timeout=10).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "model_name"))
            samples[(s.name, labels)] = s.value
    return samples


def metric(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_idle(url: str, timeout: float = 20.0) -> dict:
    """Poll /metrics until no request runs or waits and the KV pool is empty; return the last scrape."""
    deadline = time.monotonic() + timeout
    while True:
        m = scrape(url)
        idle = (metric(m, "actserve:num_requests_running") == 0 and metric(m, "actserve:num_requests_waiting") == 0
                and metric(m, "actserve:kv_cache_usage_perc") == 0)
        if idle or time.monotonic() > deadline:
            return m
        time.sleep(0.05)


def tokenize(http, **body) -> list[int]:
    r = http.post("/tokenize", json={"model": MODEL, **body})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["count"] == len(out["tokens"]) and out["max_model_len"] == MAX_MODEL_LEN
    return out["tokens"]


def sse_events(response_or_lines) -> list:
    """The `data:` payloads of an SSE stream (a response or its lines), JSON-decoded except `[DONE]`."""
    lines = response_or_lines.iter_lines() if hasattr(response_or_lines, "iter_lines") else response_or_lines
    events = []
    for line in lines:
        if line.startswith("data: "):
            data = line[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events
