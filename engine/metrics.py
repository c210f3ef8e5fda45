"""Prometheus metrics with vLLM's names (prefix `actserve:`) and bucket lists, fed by an `AsyncLLM` step listener.

One `EngineMetrics` per server, on its own `CollectorRegistry`. Every series is labelled `model_name`. Counts are
per request, not per sequence: a request with `n > 1` counts once in `request_success_total` and its prompt once
in `prompt_tokens_total`; every generated token of every sequence counts in `generation_tokens_total`.
"""
import time

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0, 2560.0]
ITL_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
               80.0]
REQUEST_LATENCY_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                           240.0, 480.0, 960.0, 1920.0, 7680.0]
ITERATION_TOKEN_BUCKETS = [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]


class _RequestState:
    __slots__ = ("prompt_counted", "tokens", "last_time")

    def __init__(self, n: int):
        self.prompt_counted = False
        self.tokens = [0] * n
        self.last_time = [0.0] * n


class TotalCounter:
    """A Prometheus counter advanced to a running total that the engine keeps."""

    def __init__(self, counter):
        self.counter, self.seen = counter, 0

    def advance(self, total: int):
        if total > self.seen:
            self.counter.inc(total - self.seen)
            self.seen = total


class CacheCounts:
    """A cache's hit and miss counters and hit-rate gauge, advanced from its counts since start."""

    def __init__(self, hits, misses, rate):
        self.hits, self.misses, self.rate = hits, misses, rate
        self.seen = (0, 0)

    def advance(self, hits: int, misses: int):
        if (hits, misses) != self.seen:
            self.hits.inc(hits - self.seen[0])
            self.misses.inc(misses - self.seen[1])
            self.rate.set(hits / (hits + misses))
            self.seen = (hits, misses)


class EngineMetrics:
    """Pass `metrics.on_step` to `AsyncLLM(step_listeners=[...])`; expose `registry` at `/metrics`."""

    def __init__(self, model_name: str, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        labels = ["model_name"]

        def gauge(name, doc):
            return Gauge(f"actserve:{name}", doc, labels, registry=self.registry).labels(model_name)

        def counter(name, doc):
            return Counter(f"actserve:{name}", doc, labels, registry=self.registry).labels(model_name)

        def histogram(name, doc, buckets):
            return Histogram(f"actserve:{name}", doc, labels, buckets=buckets,
                             registry=self.registry).labels(model_name)

        self.running = gauge("num_requests_running", "Requests in the running batch.")
        self.waiting = gauge("num_requests_waiting", "Requests waiting to be scheduled.")
        self.kv_usage = gauge("kv_cache_usage_perc", "Fraction of the KV block pool in use (0-1).")
        self.prompt_tokens = counter("prompt_tokens", "Prompt tokens prefilled.")
        self.generation_tokens = counter("generation_tokens", "Tokens generated.")
        self.preemptions = TotalCounter(counter("num_preemptions", "Sequences preempted (recomputed later)."))
        self.prefix_queries = TotalCounter(counter("prefix_cache_queries", "Prompt tokens looked up in the prefix "
                                                   "cache (requests that may share KV blocks)."))
        self.prefix_hits = TotalCounter(counter("prefix_cache_hits", "Prompt tokens found in the prefix cache (their "
                                                "KV blocks were reused, not computed)."))
        self._success = Counter("actserve:request_success", "Finished requests by finish reason.",
                                ["model_name", "finished_reason"], registry=self.registry)
        self.model_name = model_name
        for reason in ("stop", "length", "abort"):
            self._success.labels(model_name, reason)
        self.ttft = histogram("time_to_first_token_seconds", "Time to first token.", TTFT_BUCKETS)
        self.itl = histogram("inter_token_latency_seconds", "Time between consecutive tokens of a sequence.",
                             ITL_BUCKETS)
        self.e2e = histogram("e2e_request_latency_seconds", "Arrival to finish.", REQUEST_LATENCY_BUCKETS)
        self.queue_time = histogram("request_queue_time_seconds", "Arrival to first scheduled.",
                                    REQUEST_LATENCY_BUCKETS)
        self.iteration_tokens = histogram("iteration_tokens_total", "Tokens processed per engine step.",
                                          ITERATION_TOKEN_BUCKETS)
        layered = ["model_name", "layer"]
        self.kv_tokens_attended = Gauge("actserve:kv_tokens_attended", "KV tokens the last query attended, per layer "
                                        "(mean over sequences under a selection policy).", layered,
                                        registry=self.registry)
        self.kv_blocks_selected = Gauge("actserve:kv_blocks_selected", "Blocks retrieved for the last query, per layer "
                                        "(mean over sequences under a selection policy).", layered,
                                        registry=self.registry)
        self.mlp_active = Gauge("actserve:mlp_active_fraction", "Fraction of MLP activations computed by sparse "
                                "decode steps, per layer (since start).", layered, registry=self.registry)
        self.memory_rows = TotalCounter(counter("memory_rows_read", "Memory-layer value rows read."))

        def cache(name, hits_doc, misses_doc, what):
            rate = Gauge(f"actserve:{name}_hit_rate", f"Hits / lookups of {what} since start.", ["model_name"],
                         registry=self.registry).labels(model_name)
            return CacheCounts(counter(f"{name}_hits", hits_doc), counter(f"{name}_misses", misses_doc), rate)

        self.device_cache = cache("kv_device_cache", "KV blocks found in the device cache (--kv-offload), summed over "
                                  "layers.", "KV blocks copied from host memory into the device cache "
                                  "(--kv-offload), summed over layers.", "the device KV cache (--kv-offload)")
        self.tile_cache = cache("kv_tile_cache", "Tiles (one KV head of one retrieved block) read from the requests' "
                                "tile caches (CPU), summed over layers.", "Tiles loaded from the KV pool into the "
                                "requests' tile caches (CPU), summed over layers.", "the requests' tile caches (CPU)")
        self._requests: dict[str, _RequestState] = {}

    def on_step(self, engine, outputs, step_seconds):
        """Step listener: runs in the engine thread after each step (`step_seconds` None for abort outputs)."""
        now = time.monotonic()
        scheduler = engine.scheduler
        if step_seconds is not None and engine.last_step_tokens:
            self.iteration_tokens.observe(engine.last_step_tokens)
        for out in outputs:
            self._on_output(out, now)
        self.running.set(len({s.request.request_id for s in scheduler.running}))
        self.waiting.set(len({s.request.request_id for s in scheduler.waiting}))
        self.kv_usage.set(engine.block_manager.usage)
        self.preemptions.advance(scheduler.num_preemptions)
        self.prefix_queries.advance(scheduler.prefix_query_tokens)
        self.prefix_hits.advance(scheduler.prefix_hit_tokens)
        if step_seconds is not None:
            self._technique_metrics(engine.runner)

    def _technique_metrics(self, runner):
        states = list(runner.kv_states.values())
        if states:
            attended = _on_host([s.tokens_attended for s in states])     # [sequences][layers]
            selected = _on_host([s.blocks_selected for s in states])
            for layer in range(len(attended[0])):
                name = (self.model_name, str(layer))
                self.kv_tokens_attended.labels(*name).set(sum(row[layer] for row in attended) / len(states))
                self.kv_blocks_selected.labels(*name).set(sum(row[layer] for row in selected) / len(states))
        for layer, skipped in enumerate(runner.sparsity.achieved()):
            self.mlp_active.labels(self.model_name, str(layer)).set(1.0 - skipped)
        memories = getattr(runner.model, "memory_layers", lambda: [])()
        self.memory_rows.advance(sum(m.rows_read for m in memories))
        self.device_cache.advance(*runner.device_cache_counts())
        self.tile_cache.advance(*runner.tile_cache_counts())

    def _on_output(self, out, now: float):
        state = self._requests.get(out.request_id)
        if state is None:
            state = self._requests[out.request_id] = _RequestState(len(out.outputs))
        m = out.metrics
        arrival = m.get("arrival_time") or now
        for comp in out.outputs:
            i = comp.index
            new = len(comp.token_ids) - state.tokens[i]
            if new <= 0:
                continue
            if not state.prompt_counted:
                state.prompt_counted = True
                self.prompt_tokens.inc(len(out.prompt_token_ids))
                self.ttft.observe(max(0.0, (m.get("first_token_time") or now) - arrival))
            if state.tokens[i]:
                for _ in range(new):
                    self.itl.observe(max(0.0, (now - state.last_time[i]) / new))
            self.generation_tokens.inc(new)
            state.tokens[i] += new
            state.last_time[i] = now
        if out.finished:
            del self._requests[out.request_id]
            reasons = {c.finish_reason for c in out.outputs}
            reason = next((r for r in ("abort", "length", "stop") if r in reasons), "stop")
            if not state.prompt_counted and reason != "abort":   # max_tokens=0: the prompt only, prefilled
                self.prompt_tokens.inc(len(out.prompt_token_ids))
            self._success.labels(self.model_name, reason).inc()
            self.e2e.observe(max(0.0, (m.get("finished_time") or now) - arrival))
            if m.get("scheduled_time") is not None:
                self.queue_time.observe(max(0.0, m["scheduled_time"] - arrival))


def _on_host(rows: list[list]) -> list[list[float]]:
    """Numbers that may be device tensors (ActQKV's counts off the CPU), read with one host sync."""
    tensors = [v for row in rows for v in row if torch.is_tensor(v)]
    read = iter(torch.stack([t.float() for t in tensors]).tolist() if tensors else [])
    return [[next(read) if torch.is_tensor(v) else float(v) for v in row] for row in rows]
