"""Pure ASGI middleware (streaming and disconnects pass through untouched): API key, body size, X-Request-Id."""
import hmac
import json

from api.errors import error_body

OPEN_PATHS = ("/health", "/metrics", "/version", "/openapi.json", "/docs", "/redoc")


async def _send_error(send, status: int, message: str, headers: list | None = None):
    body = json.dumps(error_body(status, message)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class APIMiddleware:
    """Checks `Authorization: Bearer <key>` on everything but `OPEN_PATHS` (constant-time), refuses bodies over
    `max_body_bytes` with 413 (buffering the body so the route reads it from memory), and echoes X-Request-Id."""

    def __init__(self, app, api_key: str | None = None, max_body_bytes: int = 32 * 2**20):
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.api_key is not None and not scope["path"].startswith(OPEN_PATHS):
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, b"Bearer " + self.api_key):
                return await _send_error(send, 401, "Invalid or missing API key (send `Authorization: Bearer KEY`).",
                                         [(b"www-authenticate", b"Bearer")])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            return await _send_error(send, 413, f"Request body larger than {self.max_body_bytes} bytes.")
        receive = await self._buffered(receive) if scope["method"] in ("POST", "PUT", "PATCH") else receive
        if receive is None:
            return await _send_error(send, 413, f"Request body larger than {self.max_body_bytes} bytes.")
        request_id = headers.get(b"x-request-id")
        if request_id is not None:
            inner_send = send

            async def send(message):
                if message["type"] == "http.response.start":
                    message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id)]}
                await inner_send(message)
        await self.app(scope, receive, send)

    async def _buffered(self, receive):
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return lambda: _return(message)
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                return None
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()
        return replay


async def _return(message):
    return message
