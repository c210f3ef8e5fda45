"""`actserve serve`: the HTTP server under uvicorn, with a graceful SIGTERM drain that exits 0."""
import argparse
import contextlib
import logging
import os
import signal
import threading

import uvicorn

from engine.cli_options import add_engine_arguments, engine_config_from_args
from engine.config import parse_bytes
from engine.models.model_config import ModelLoadError

log = logging.getLogger("actserve.api")

SERVER_FLAGS = [
    # flag, type, default, help
    ("host", str, "127.0.0.1", "address to listen on (0.0.0.0 for all interfaces)"),
    ("port", int, 8000, "port to listen on"),
    ("api_key", str, None, "if set, /v1/*, /tokenize and /detokenize need `Authorization: Bearer KEY`"),
    ("served_model_name", str, None, "model name clients send and see (default: the --model path)"),
    ("max_queued_requests", int, 256, "requests that may wait beyond --max-num-seqs running; more get 429 "
                                      "(-1: unbounded)"),
    ("shutdown_timeout", float, 30.0, "seconds SIGTERM waits for running requests before aborting them"),
    ("max_request_body", str, "32MiB", "largest request body accepted (413 beyond)"),
    ("log_level", str, "info", "debug | info | warning | error"),
]


def add_server_arguments(parser: argparse.ArgumentParser, env: dict | None = None):
    env = os.environ if env is None else env
    for name, typ, default, help_text in SERVER_FLAGS:
        var = "ACTSERVE_" + name.upper()
        value = env.get(var, default)
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=typ,
                            default=typ(value) if value is not None else None, help=f"{help_text} [env {var}]")
    parser.add_argument("--disable-access-log", action="store_true",
                        default=env.get("ACTSERVE_DISABLE_ACCESS_LOG", "") not in ("", "0", "false"),
                        help="do not log every HTTP request [env ACTSERVE_DISABLE_ACCESS_LOG]")
    add_engine_arguments(parser, env)


class DrainingServer(uvicorn.Server):
    """SIGTERM/SIGINT: stop accepting, let running requests finish (bounded by `timeout_graceful_shutdown`), then
    return normally so the process exits 0. A second signal aborts what is left at once."""

    def __init__(self, config: uvicorn.Config, app_state):
        super().__init__(config)
        self.app_state = app_state
        self.exit_code = 0

    def drain(self, *_):
        if self.should_exit:
            self.force_exit = True
        log.info("draining: no new requests; waiting up to %.0fs for running ones",
                 self.config.timeout_graceful_shutdown or 0)
        self.app_state.draining = True
        self.should_exit = True

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.drain) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def make_server(args) -> DrainingServer:
    from api.server import build_app
    config = engine_config_from_args(args)
    if config.model is None:
        from engine.demo import bundled_model_dir
        config.model = bundled_model_dir()
    if not os.path.isdir(config.model):
        raise ModelLoadError(f"model directory not found: {config.model}")
    holder: dict = {}
    url = f"http://{args.host}:{args.port}"

    def ready(state):
        log.info("actserve ready: serving %s (max_model_len %d) at %s/v1", state.model_name,
                 state.engine.max_model_len, url)

    def failed(exc):
        holder["server"].exit_code = 1
        holder["server"].should_exit = True

    queued = None if args.max_queued_requests is not None and args.max_queued_requests < 0 \
        else args.max_queued_requests
    app = build_app(config, served_model_name=args.served_model_name or (None if args.model else "actserve-demo"),
                    api_key=args.api_key, max_queued_requests=queued,
                    max_body_bytes=parse_bytes(args.max_request_body), on_ready=ready, on_load_failure=failed)
    uv_config = uvicorn.Config(app, host=args.host, port=args.port, log_config=None, log_level=args.log_level,
                               access_log=not args.disable_access_log,
                               timeout_graceful_shutdown=args.shutdown_timeout)
    server = holder["server"] = DrainingServer(uv_config, app.state.actserve)
    return server


def cmd_serve(args) -> int:
    logging.getLogger().setLevel(args.log_level.upper())
    server = make_server(args)
    server.run()
    return server.exit_code
