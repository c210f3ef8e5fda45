"""The FastAPI app: `build_app(EngineConfig, ...)` loads the engine in the background (503s until then) and serves
the OpenAI-compatible routes plus /health, /metrics, /version, /tokenize and /detokenize."""
import asyncio
import logging
import time
from contextlib import asynccontextmanager
from importlib import metadata

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api import chat, completions
from api.errors import APIError, error_response, from_exception, install_error_handlers
from api.middleware import APIMiddleware
from api.protocol import DetokenizeRequest, TokenizeRequest
from api.state import Admission, AppState
from engine.config import EngineConfig
from engine.metrics import EngineMetrics

log = logging.getLogger("actserve.api")


def version() -> str:
    try:
        return metadata.version("actserve")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def build_app(config: EngineConfig, served_model_name: str | None = None, api_key: str | None = None,
              max_queued_requests: int | None = 256, max_body_bytes: int = 32 * 2**20,
              on_ready=None, on_load_failure=None) -> FastAPI:
    """`on_ready(state)` / `on_load_failure(exc)` are called once the engine has loaded or failed to."""
    name = served_model_name or config.model or "actserve-demo"
    capacity = None if max_queued_requests is None else config.max_num_seqs + max_queued_requests
    state = AppState(name, config.model, Admission(capacity), created=int(time.time()))
    state.metrics = EngineMetrics(name)

    async def load():
        from engine.async_engine import AsyncLLM
        try:
            state.engine = await asyncio.to_thread(AsyncLLM, config, step_listeners=[state.metrics.on_step])
        except Exception as exc:
            log.error("cannot load the model: %s", exc)
            state.load_error = exc
            if on_load_failure:
                on_load_failure(exc)
            return
        state.loaded.set()
        if on_ready:
            on_ready(state)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loader = asyncio.create_task(load())
        yield
        state.draining = True
        if not loader.done():
            await asyncio.wait({loader}, timeout=600)
        if state.engine is not None:
            await asyncio.to_thread(state.engine.shutdown)

    app = FastAPI(title="actserve", version=version(), lifespan=lifespan,
                  description="OpenAI-compatible LLM serving (completions, chat completions) with Prometheus metrics.")
    app.state.actserve = state
    install_error_handlers(app)
    app.include_router(completions.router)
    app.include_router(chat.router)
    _add_routes(app, state)
    app.add_middleware(APIMiddleware, api_key=api_key, max_body_bytes=max_body_bytes)
    return app


def _add_routes(app: FastAPI, state: AppState):
    @app.get("/health")
    async def health():
        try:
            state.ready_engine()
        except APIError as err:
            return error_response(err.status, err.message, headers=err.headers)
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/version")
    async def get_version():
        return {"version": version()}

    def card():
        engine = state.engine
        return {"id": state.model_name, "object": "model", "created": state.created, "owned_by": "actserve",
                "root": state.model_path, "parent": None,
                "max_model_len": engine.max_model_len if engine is not None else None}

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [card()]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str):
        state.check_model(model_id)
        return card()

    @app.post("/tokenize")
    async def tokenize(req: TokenizeRequest):
        state.check_model(req.model)
        engine = state.ready_engine()
        try:
            if req.messages is not None:
                from api.chat import chat_prompt_ids
                tokens = await chat_prompt_ids(engine, req)
            else:
                add = True if req.add_special_tokens is None else req.add_special_tokens
                tokens = await asyncio.to_thread(engine.tokenizer.encode, req.prompt, add_special_tokens=add)
        except APIError:
            raise
        except Exception as exc:
            raise from_exception(exc) from exc
        return {"count": len(tokens), "max_model_len": engine.max_model_len, "tokens": tokens}

    @app.post("/detokenize")
    async def detokenize(req: DetokenizeRequest):
        state.check_model(req.model)
        engine = state.ready_engine()
        vocab = len(engine.tokenizer)
        if any(not 0 <= t < vocab for t in req.tokens):
            raise APIError(400, f"Token ids must be integers in [0, {vocab}).", "tokens")
        return JSONResponse({"prompt": engine.tokenizer.decode(req.tokens)})
