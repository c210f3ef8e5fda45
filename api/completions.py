"""`POST /v1/completions`: legacy text completions, streamed or not."""
import asyncio
import time
import uuid

from fastapi import APIRouter, Request

from api.errors import APIError, from_exception
from api.generation import (EngineRun, RunStreamingResponse, final_outputs, log_ignored_fields,
                            sse, sse_stream, until_disconnect)
from api.logprobs import completion_logprobs, joined, prompt_completion_logprobs, prompt_logprobs_json
from api.protocol import MAX_N, CompletionRequest
from api.sampling import to_sampling_params, usage
from engine.llm_engine import ContextLengthError, context_length_message

router = APIRouter()


async def _prompt_ids(engine, req: CompletionRequest) -> list[list[int]]:
    prompt = req.prompt
    if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
        prompt = [prompt]
    if not prompt or any(len(p) == 0 for p in prompt):
        raise APIError(400, "The prompt must be non-empty.", "prompt")
    if len(prompt) > MAX_N:
        raise APIError(400, f"At most {MAX_N} prompts per request.", "prompt")
    tok = engine.tokenizer

    def encode(p):
        return tok.encode(p, add_special_tokens=req.add_special_tokens) if isinstance(p, str) else list(p)
    return await asyncio.to_thread(lambda: [encode(p) for p in prompt])


def _echo_texts(engine, req: CompletionRequest, prompts: list[list[int]]) -> list[str]:
    if not req.echo:
        return [""] * len(prompts)
    if isinstance(req.prompt, str):
        return [req.prompt]
    if isinstance(req.prompt, list) and req.prompt and isinstance(req.prompt[0], str):
        return list(req.prompt)
    vocab = len(engine.tokenizer)
    if any(not 0 <= t < vocab for p in prompts for t in p):
        raise APIError(400, f"Token ids must be integers in [0, {vocab}).", "prompt")
    return [engine.tokenizer.decode(p, skip_special_tokens=False) for p in prompts]


@router.post("/v1/completions")
async def create_completion(req: CompletionRequest, raw: Request):
    state = raw.app.state.actserve
    state.check_model(req.model)
    log_ignored_fields(req)
    engine = state.ready_engine()
    max_tokens = 16 if req.max_tokens is None else req.max_tokens
    prompt_logprobs = req.logprobs if req.echo else None   # echo + logprobs: the prompt's tokens get logprobs too
    try:
        params = to_sampling_params(req, max_tokens, req.logprobs, prompt_logprobs)
        prompts = await _prompt_ids(engine, req)
    except APIError:
        raise
    except Exception as exc:
        raise from_exception(exc) from exc
    rid = f"cmpl-{uuid.uuid4().hex}"
    ctx = _Context(state.model_name, rid, req, prompts,
                   lambda t: engine.tokenizer.decode([t], skip_special_tokens=False))
    if max_tokens == 0 and params.prompt_logprobs is None:
        for p in prompts:
            if len(p) > engine.max_model_len:
                raise from_exception(ContextLengthError(
                    "input_tokens", context_length_message(engine.max_model_len, 0, len(p))))
        ctx.echo = _echo_texts(engine, req, prompts)
        return ctx.prompt_only()
    ctx.echo = _echo_texts(engine, req, prompts)
    run = EngineRun(state, prompts, params, rid, req.kv_overrides(), req.mlp_sparsity)
    if req.stream:
        await run.start()
        return RunStreamingResponse(sse_stream(run, ctx.stream(run)), run)

    async def complete():
        return ctx.response(await final_outputs(run))
    return await until_disconnect(raw, complete())


class _Context:
    def __init__(self, model: str, rid: str, req: CompletionRequest, prompts: list[list[int]], decode_token):
        self.model, self.rid, self.req, self.prompts = model, rid, req, prompts
        self.decode_token = decode_token   # token id -> its text (an echoed prompt's first token)
        self.created = int(time.time())
        self.echo: list[str] = []
        self.k = req.logprobs

    def _base(self, obj="text_completion") -> dict:
        return {"id": self.rid, "object": obj, "created": self.created, "model": self.model}

    def _choice(self, index, text, logprobs, finish_reason, stop_reason, prompt_logprobs=None) -> dict:
        choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason,
                  "stop_reason": stop_reason}
        if self.req.prompt_logprobs is not None:
            choice["prompt_logprobs"] = prompt_logprobs_json(prompt_logprobs)
        return choice

    def _usage(self, completion_tokens: int) -> dict:
        return usage(sum(len(p) for p in self.prompts), completion_tokens)

    def response(self, finals) -> dict:
        choices, generated = [], 0
        for i, out in enumerate(finals):
            for comp in out.outputs:
                lp = None if self.k is None else self._logprobs(out, comp.token_ids, comp.logprobs)
                choices.append(self._choice(i * self.req.n + comp.index, self.echo[i] + comp.text, lp,
                                            comp.finish_reason, comp.stop_reason, out.prompt_logprobs))
                generated += len(comp.token_ids)
        return {**self._base(), "choices": choices, "usage": self._usage(generated), "system_fingerprint": None}

    def _logprobs(self, out, token_ids: list[int], entries: list, text_offset: int = 0, first: bool = True) -> dict:
        """Legacy logprobs of generated tokens; with echo, of the prompt's tokens before them (in the first part of
        a choice's text only)."""
        if not (self.req.echo and first):
            return completion_logprobs(token_ids, entries, self.k, text_offset)
        prompt = out.prompt_token_ids
        echoed = prompt_completion_logprobs(prompt, out.prompt_logprobs, self.k, self.decode_token(prompt[0]))
        return joined(echoed, completion_logprobs(token_ids, entries, self.k, len("".join(echoed["tokens"]))))

    def prompt_only(self):
        n = self.req.n
        choices = [self._choice(i * n + j, self.echo[i], None, "length", None)
                   for i in range(len(self.prompts)) for j in range(n)]
        if not self.req.stream:
            return {**self._base(), "choices": choices, "usage": self._usage(0), "system_fingerprint": None}
        from starlette.responses import StreamingResponse

        async def events():
            for choice in choices:
                yield sse({**self._base(), "choices": [choice]})
            if self._include_usage():
                yield sse({**self._base(), "choices": [], "usage": self._usage(0)})
            yield "data: [DONE]\n\n"
        return StreamingResponse(events(), media_type="text/event-stream")

    def _include_usage(self) -> bool:
        return bool(self.req.stream_options and self.req.stream_options.include_usage)

    async def stream(self, run: EngineRun):
        opts = self.req.stream_options
        continuous = bool(opts and opts.continuous_usage_stats)
        offsets: dict[int, int] = {}
        generated: dict[int, int] = {}
        async for d in run.deltas():
            first = d.index not in offsets
            text = self.echo[d.prompt_index] + d.text if first else d.text
            if first:
                offsets[d.index] = len(self.echo[d.prompt_index])
            lp = None
            if self.k is not None:
                lp = self._logprobs(d.request, d.token_ids, d.logprobs, offsets[d.index], first)
                if lp["tokens"]:
                    offsets[d.index] = lp["text_offset"][-1] + len(lp["tokens"][-1])
            generated[d.index] = len(d.output.token_ids)
            chunk = {**self._base(), "choices": [self._choice(d.index, text, lp, d.output.finish_reason,
                                                              d.output.stop_reason)]}
            if continuous:
                chunk["usage"] = usage(len(self.prompts[d.prompt_index]), len(d.output.token_ids))
            yield sse(chunk)
        if self._include_usage():
            yield sse({**self._base(), "choices": [], "usage": self._usage(sum(generated.values()))})
