"""Running one HTTP request's engine requests (one per prompt) as a single stream, and aborting them on disconnect.

`EngineRun` validates every prompt before anything is sent to the client (so parameter errors are 400s, never a
broken 200 stream), merges the per-prompt output streams, and aborts them all when closed early.
"""
import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from typing import AsyncIterator

from fastapi import Request
from starlette.responses import Response, StreamingResponse

from api.errors import from_exception
from api.state import AppState
from engine.outputs import CompletionOutput, RequestOutput
from engine.sampling_params import SamplingParams

log = logging.getLogger("actserve.api")
_END = object()


@dataclass
class Delta:
    index: int                     # choice index
    prompt_index: int
    text: str
    token_ids: list[int]
    logprobs: list                 # entries for `token_ids` (empty unless requested)
    output: CompletionOutput       # cumulative
    request: RequestOutput


class EngineRun:
    def __init__(self, state: AppState, prompts: list[list[int]], params: SamplingParams, request_id: str,
                 kv: dict | None = None, mlp_sparsity: str | None = None):
        self.state, self.prompts, self.params, self.request_id = state, prompts, params, request_id
        self.kv, self.mlp_sparsity = kv, mlp_sparsity
        self.queue: asyncio.Queue = asyncio.Queue()
        self.tasks: list[asyncio.Task] = []
        self.admitted = False
        self.closed = False

    async def start(self):
        """Admit and submit every prompt; raise the first validation error (after aborting the rest)."""
        engine = self.state.ready_engine()
        self.state.admission.acquire(len(self.prompts))
        self.admitted = True
        try:
            gens = [engine.generate(p, self.params, f"{self.request_id}-{i}", kv=self.kv,
                                    mlp_sparsity=self.mlp_sparsity) for i, p in enumerate(self.prompts)]
            firsts = [asyncio.ensure_future(g.__anext__()) for g in gens]
            await asyncio.sleep(0)  # each generator validates synchronously on its first step
            for first in firsts:
                if first.done() and not first.cancelled() and first.exception() is not None:
                    for other in firsts:
                        other.cancel()
                    raise first.exception()
            self.tasks = [asyncio.create_task(self._pump(i, g, f)) for i, (g, f) in enumerate(zip(gens, firsts))]
        except BaseException as exc:
            await self.close()
            if isinstance(exc, Exception):
                raise from_exception(exc) from exc
            raise

    async def _pump(self, index: int, gen, first: asyncio.Future):
        try:
            out = await first
            await self.queue.put((index, out))
            while not out.finished:
                out = await gen.__anext__()
                await self.queue.put((index, out))
        except asyncio.CancelledError:
            first.cancel()
            with contextlib.suppress(BaseException):
                await first
            with contextlib.suppress(BaseException):
                await gen.aclose()
            raise
        except BaseException as exc:
            await self.queue.put((index, exc))
        finally:
            await self.queue.put((index, _END))

    async def outputs(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        """(prompt index, cumulative output) until every prompt has finished; re-raises an engine failure."""
        remaining = len(self.prompts)
        while remaining:
            index, item = await self.queue.get()
            if item is _END:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item

    async def deltas(self) -> AsyncIterator["Delta"]:
        """What is new per choice (index = prompt index * n + sequence index) since the last delta; a choice's
        last delta carries its finish reason. Text held back for a possible stop string is not yet new."""
        sent_text: dict[int, int] = {}
        sent_tokens: dict[int, int] = {}
        done: set[int] = set()
        async for i, out in self.outputs():
            for comp in out.outputs:
                idx = i * self.params.n + comp.index
                if idx in done:
                    continue
                start = sent_tokens.get(idx, 0)
                text = comp.text[sent_text.get(idx, 0):]
                entries = comp.logprobs[start:] if comp.logprobs is not None else []
                if not text and not entries and comp.finish_reason is None:
                    continue
                sent_text[idx], sent_tokens[idx] = len(comp.text), len(comp.token_ids)
                if comp.finish_reason is not None:
                    done.add(idx)
                yield Delta(idx, i, text, comp.token_ids[start:], entries, comp, out)

    async def close(self):
        """Abort whatever is unfinished and give the admission slots back (idempotent)."""
        if self.closed:
            return
        self.closed = True
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(BaseException):
                await task
        if self.admitted:
            self.state.admission.release(len(self.prompts))


async def _wait_for_disconnect(request: Request):
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def until_disconnect(request: Request, work):
    """Run `work` (a coroutine making a Response); cancel it if the client goes away first."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watch.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        return Response(status_code=499)
    return task.result()


async def final_outputs(run: "EngineRun") -> list[RequestOutput]:
    """Start `run`, wait for each prompt's final output (in prompt order) and close it; errors become API errors."""
    try:
        await run.start()
        finals = {}
        async for i, out in run.outputs():
            finals[i] = out
        return [finals[i] for i in range(len(run.prompts))]
    except Exception as exc:
        raise from_exception(exc) from exc
    finally:
        await run.close()


def log_ignored_fields(req):
    """Unknown fields are accepted (OpenAI clients send many) and logged, as vLLM does."""
    extra = sorted(req.model_extra or {})
    if extra:
        log.info("fields present in the request but ignored: %s", ", ".join(extra))


def sse(payload) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(',', ':'))}\n\n"


SSE_DONE = "data: [DONE]\n\n"


def sse_error(exc: BaseException) -> str:
    err = from_exception(exc)
    return sse({"error": {"message": err.message, "type": "server_error" if err.status >= 500 else
                          "invalid_request_error", "param": err.param, "code": err.code}})


class RunStreamingResponse(StreamingResponse):
    """A streaming response that closes its `EngineRun` however the response ends (even if never started)."""

    def __init__(self, content, run: EngineRun):
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.run = run

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.run.close()


async def sse_stream(run: EngineRun, chunks) -> AsyncIterator[str]:
    """Wrap a chunk generator: an engine failure mid-stream becomes an error event, and the stream ends [DONE]."""
    try:
        async for chunk in chunks:
            yield chunk
    except Exception as exc:  # the 200 is already out: report in-band
        yield sse_error(exc)
    finally:
        await run.close()
    yield SSE_DONE

