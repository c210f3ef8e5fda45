"""`POST /v1/chat/completions`: the model's chat template, then generation, streamed or not."""
import asyncio
import time
import uuid

from fastapi import APIRouter, Request

from api.errors import APIError, from_exception
from api.generation import (EngineRun, RunStreamingResponse, final_outputs, log_ignored_fields,
                            sse, sse_stream, until_disconnect)
from api.logprobs import chat_logprobs, prompt_logprobs_json
from api.protocol import ChatCompletionRequest, ChatMessage
from api.sampling import to_sampling_params, usage

router = APIRouter()
_RESERVED = {"conversation", "tools", "documents", "chat_template", "tokenize", "return_dict", "return_tensors",
             "padding", "truncation", "max_length", "return_assistant_tokens_mask", "tokenizer_kwargs",
             "add_generation_prompt", "continue_final_message"}


def conversation(messages: list[ChatMessage]) -> list[dict]:
    """Messages as the chat template expects them: text content only (parts joined by newlines)."""
    out = []
    for i, m in enumerate(messages):
        content = m.content
        if isinstance(content, list):
            if any(p.type != "text" or p.text is None for p in content):
                raise APIError(400, "Only text content parts are supported.", f"messages.{i}.content")
            content = "\n".join(p.text for p in content)
        msg = {"role": m.role, "content": content or ""}
        if m.name is not None:
            msg["name"] = m.name
        out.append(msg)
    return out


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = True, continue_final_message: bool = False,
           kwargs: dict | None = None) -> str:
    if continue_final_message and add_generation_prompt:
        raise APIError(400, "continue_final_message and add_generation_prompt cannot both be true.",
                       "continue_final_message")
    if not getattr(tokenizer, "chat_template", None):
        raise APIError(400, "This model has no chat template; use /v1/completions.", "messages")
    extra = {k: v for k, v in (kwargs or {}).items() if k not in _RESERVED}
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                             continue_final_message=continue_final_message, **extra)
    except Exception as exc:  # a template can fail on any input it does not expect
        raise APIError(400, f"Cannot apply the chat template: {exc}", "messages") from exc
    if not isinstance(text, str):
        raise APIError(400, "The chat template did not produce text.", "chat_template_kwargs")
    return text


async def chat_prompt_ids(engine, req) -> list[int]:
    msgs = conversation(req.messages)
    text = render(engine.tokenizer, msgs, req.add_generation_prompt, getattr(req, "continue_final_message", False),
                  getattr(req, "chat_template_kwargs", None))
    add_special = req.add_special_tokens if req.add_special_tokens is not None else False
    return await asyncio.to_thread(engine.tokenizer.encode, text, add_special_tokens=add_special)


@router.post("/v1/chat/completions")
async def create_chat_completion(req: ChatCompletionRequest, raw: Request):
    state = raw.app.state.actserve
    state.check_model(req.model)
    log_ignored_fields(req)
    engine = state.ready_engine()
    if req.top_logprobs is not None and not req.logprobs:
        raise APIError(400, "top_logprobs requires logprobs=true.", "top_logprobs")
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    try:
        params = to_sampling_params(req, max_tokens, (req.top_logprobs or 0) if req.logprobs else None)
        prompt = await chat_prompt_ids(engine, req)
    except APIError:
        raise
    except Exception as exc:
        raise from_exception(exc) from exc
    ctx = _Chat(state.model_name, f"chatcmpl-{uuid.uuid4().hex}", req, prompt)
    run = EngineRun(state, [prompt], params, ctx.rid, req.kv_overrides(), req.mlp_sparsity)
    if req.stream:
        await run.start()
        return RunStreamingResponse(sse_stream(run, ctx.stream(run)), run)

    async def complete():
        return ctx.response((await final_outputs(run))[0])
    return await until_disconnect(raw, complete())


class _Chat:
    def __init__(self, model: str, rid: str, req: ChatCompletionRequest, prompt: list[int]):
        self.model, self.rid, self.req, self.prompt = model, rid, req, prompt
        self.created = int(time.time())
        self.k = (req.top_logprobs or 0) if req.logprobs else None
        last = req.messages[-1]
        self.echo = (conversation([last])[0]["content"] if req.echo and last.role == "assistant" else "")

    def _base(self, obj: str) -> dict:
        return {"id": self.rid, "object": obj, "created": self.created, "model": self.model}

    def response(self, out) -> dict:
        choices = []
        for comp in out.outputs:
            lp = None if self.k is None else chat_logprobs(comp.token_ids, comp.logprobs, self.k)
            choices.append({"index": comp.index, "message": {"role": "assistant", "content": self.echo + comp.text},
                            "logprobs": lp, "finish_reason": comp.finish_reason, "stop_reason": comp.stop_reason})
        generated = sum(len(c.token_ids) for c in out.outputs)
        body = {**self._base("chat.completion"), "choices": choices, "usage": usage(len(self.prompt), generated),
                "system_fingerprint": None}
        if self.req.prompt_logprobs is not None:
            body["prompt_logprobs"] = prompt_logprobs_json(out.prompt_logprobs)
        return body

    def _chunk(self, index: int, delta: dict, logprobs=None, finish_reason=None, stop_reason=None, **extra) -> str:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        if finish_reason is not None:
            choice["stop_reason"] = stop_reason
        return sse({**self._base("chat.completion.chunk"), "choices": [choice], **extra})

    async def stream(self, run: EngineRun):
        opts = self.req.stream_options
        continuous = bool(opts and opts.continuous_usage_stats)
        for i in range(self.req.n):
            yield self._chunk(i, {"role": "assistant", "content": ""})
            if self.echo:
                yield self._chunk(i, {"content": self.echo})
        generated: dict[int, int] = {}
        async for d in run.deltas():
            lp = None if self.k is None else chat_logprobs(d.token_ids, d.logprobs, self.k)
            generated[d.index] = len(d.output.token_ids)
            extra = {"usage": usage(len(self.prompt), generated[d.index])} if continuous else {}
            yield self._chunk(d.index, {"content": d.text}, lp, d.output.finish_reason, d.output.stop_reason, **extra)
        if opts and opts.include_usage:
            yield sse({**self._base("chat.completion.chunk"), "choices": [],
                       "usage": usage(len(self.prompt), sum(generated.values()))})
