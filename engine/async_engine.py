"""`AsyncLLM`: the engine's step loop in a background thread, with an asyncio face for servers.

The asyncio side only validates, enqueues commands and reads per-request queues; the loop thread owns the
engine. Model compute releases the GIL, so the event loop stays responsive while a step runs.
"""
import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import AsyncIterator

from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams

log = logging.getLogger("actserve")


class EngineDeadError(RuntimeError):
    """The step loop has failed; no request can be served until restart."""


@dataclass
class EngineStats:
    num_running: int = 0
    num_waiting: int = 0
    kv_cache_usage: float = 0.0
    num_preemptions: int = 0


class _Stream:
    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()

    def put(self, item):
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


class AsyncLLM:
    def __init__(self, config: EngineConfig, step_listeners=()):
        """Load the model (blocking) and start the step loop. `step_listeners` are called in the loop thread as
        `listener(engine, outputs, step_seconds)` after every step (metrics hook here)."""
        self.engine = LLMEngine(config)
        self.step_listeners = list(step_listeners)
        self.stats = EngineStats()
        self.dead_error: BaseException | None = None
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[str, _Stream] = {}
        self._lock = threading.Lock()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="actserve-engine", daemon=True)
        self._thread.start()

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    @property
    def is_healthy(self) -> bool:
        return self.dead_error is None and self._thread.is_alive()

    async def generate(self, prompt: str | list[int], params: SamplingParams, request_id: str,
                       kv: dict | None = None, mlp_sparsity: str | None = None) -> AsyncIterator[RequestOutput]:
        """Yield the request's cumulative output after every step that moves it, the last one `finished`.

        Validation errors (`SamplingParamsError`) are raised before the first yield. Cancelling the iterator
        (a client disconnect) aborts the request and frees its KV blocks at the next step. `kv` overrides the
        engine's KV retrieval settings for this request ({"policy": ..., "budget": ..., "positions": ...}) and
        `mlp_sparsity` its MLP sparsity ("relu", "teal:0.5", ...).
        """
        if not self.is_healthy:
            raise EngineDeadError(f"the engine has stopped: {self.dead_error}")
        with self._lock:
            if request_id in self._streams:
                raise ValueError(f"request id {request_id!r} is already in use")
            request = self.engine.make_request(request_id, prompt, params, time.monotonic(), kv, mlp_sparsity)
            stream = _Stream(asyncio.get_running_loop())
            self._streams[request_id] = stream
        self._commands.put(("add", request))
        finished = False
        try:
            while True:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    raise EngineDeadError(f"the engine has stopped: {item}") from item
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            with self._lock:
                self._streams.pop(request_id, None)
            if not finished:
                self.abort(request_id)

    def abort(self, request_id: str):
        self._commands.put(("abort", request_id))

    def shutdown(self, timeout: float = 10.0):
        self._stopping = True
        self._commands.put(("wake", None))
        self._thread.join(timeout)

    def num_unfinished(self) -> int:
        with self._lock:
            return len(self._streams)

    def _run(self):
        try:
            while not self._stopping:
                self._drain_commands(block=not self.engine.has_unfinished_requests())
                if not self.engine.has_unfinished_requests():
                    continue
                start = time.perf_counter()
                outputs = self.engine.step()
                elapsed = time.perf_counter() - start
                self._publish(outputs, elapsed)
        except BaseException as exc:  # the loop must report any failure, not die silently
            log.exception("engine loop failed")
            self.dead_error = exc
            with self._lock:
                streams = list(self._streams.values())
            for stream in streams:
                stream.put(exc)

    def _drain_commands(self, block: bool):
        try:
            command, arg = self._commands.get(timeout=0.5) if block else self._commands.get_nowait()
            while True:
                if command == "add":
                    self.engine.enqueue(arg)
                elif command == "abort":
                    out = self.engine.abort_request(arg)
                    if out is not None:
                        self._publish([out], 0.0, count_step=False)
                command, arg = self._commands.get_nowait()
        except queue.Empty:
            pass

    def _publish(self, outputs: list[RequestOutput], elapsed: float, count_step: bool = True):
        scheduler = self.engine.scheduler
        self.stats = EngineStats(len(scheduler.running), len(scheduler.waiting),
                                 self.engine.block_manager.usage, scheduler.num_preemptions)
        for listener in self.step_listeners:
            listener(self.engine, outputs, elapsed if count_step else None)
        with self._lock:
            targets = [(self._streams.get(o.request_id), o) for o in outputs]
        for stream, out in targets:
            if stream is not None:
                stream.put(out)
