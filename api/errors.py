"""OpenAI-shaped errors: `{"error": {"message", "type", "param", "code"}}`, and the handlers that make them.

Anything a client can send maps to a 4xx; a 500 means a real fault in the server.
"""
import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine.sampling_params import SamplingParamsError

log = logging.getLogger("actserve.api")

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
          500: "server_error", 503: "service_unavailable_error"}
_CODES = {400: "invalid_value", 401: "invalid_api_key", 404: "not_found", 405: "method_not_allowed",
          413: "request_too_large", 429: "rate_limit_exceeded", 500: "internal_error", 503: "service_unavailable"}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.headers = status, message, param, headers
        self.code = code or _CODES.get(status, "error")


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": _TYPES.get(status, "invalid_request_error"), "param": param,
                      "code": code or _CODES.get(status, "error")}}


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)


def from_exception(exc: BaseException) -> APIError:
    """Map an exception met while serving a request to the error a client sees."""
    from engine.async_engine import EngineDeadError
    from engine.llm_engine import ContextLengthError
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ContextLengthError):
        return APIError(400, str(exc), exc.param, "context_length_exceeded")
    if isinstance(exc, SamplingParamsError):
        return APIError(400, str(exc), exc.param)
    if isinstance(exc, EngineDeadError):
        return APIError(503, str(exc))
    if isinstance(exc, (ValueError, TypeError, OverflowError)):
        return APIError(400, str(exc))
    log.exception("internal error", exc_info=exc)
    return APIError(500, f"Internal server error: {type(exc).__name__}")


_TYPE_TAG = re.compile(r"^(str|int|float|bool|dict|list|none|[\w-]+\[.*\])$")


def _validation_param(errors: list[dict]) -> str | None:
    """The field path of the first error, without pydantic's union-member tags (`prompt.list[int].0` -> `prompt.0`)."""
    for err in errors:
        loc = [str(p) for p in err.get("loc", ()) if p != "body" and not _TYPE_TAG.match(str(p))]
        if loc:
            return ".".join(loc)
    return None


def _validation_message(errors: list[dict]) -> str:
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    return "; ".join(parts) or "Invalid request."


def install_error_handlers(app: FastAPI):
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return error_response(exc.status, exc.message, exc.param, exc.code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errors = list(exc.errors())
        return error_response(400, _validation_message(errors), _validation_param(errors))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _any(request: Request, exc: Exception):
        err = from_exception(exc)
        return error_response(err.status, err.message, err.param, err.code, err.headers)
