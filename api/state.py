"""What the routes share: the engine (once loaded), the served name, admission control and the draining flag."""
import asyncio
from dataclasses import dataclass, field

from api.errors import APIError


class Admission:
    """At most `capacity` engine requests in flight (running + queued); beyond it, 429 with Retry-After."""

    def __init__(self, capacity: int | None):
        self.capacity = capacity
        self.in_flight = 0

    def acquire(self, count: int = 1):
        if self.capacity is not None and self.in_flight + count > self.capacity:
            raise APIError(429, f"The server is at capacity ({self.capacity} requests running or queued); "
                                "retry later.", headers={"Retry-After": "1"})
        self.in_flight += count

    def release(self, count: int = 1):
        self.in_flight -= count


@dataclass
class AppState:
    model_name: str
    model_path: str | None
    admission: Admission
    engine: object = None                 # AsyncLLM once loaded
    load_error: BaseException | None = None
    draining: bool = False
    metrics: object = None                # engine.metrics.EngineMetrics
    created: int = 0
    loaded: asyncio.Event = field(default_factory=asyncio.Event)

    def ready_engine(self):
        """The engine, or a 503 that says why there is none."""
        if self.draining:
            raise APIError(503, "The server is shutting down.", headers={"Retry-After": "1"})
        if self.engine is None:
            reason = f"the model failed to load: {self.load_error}" if self.load_error else "the model is loading"
            raise APIError(503, f"Not ready: {reason}.", headers={"Retry-After": "5"})
        if not self.engine.is_healthy:
            raise APIError(503, f"The engine has stopped: {self.engine.dead_error}")
        return self.engine

    def check_model(self, name: str | None):
        if name is not None and name != self.model_name:
            raise APIError(404, f"The model `{name}` does not exist.", "model", "model_not_found")
