"""A worker's metrics in the Prometheus text format (``ghl-async worker --metrics-port``).

::

    from ghl_async.export.jobs import worker_settings
    from ghl_async.export.metrics import WorkerMetrics   # pip install "ghl-async[metrics]"

    metrics = WorkerMetrics()
    metrics.serve(9108)                                   # GET http://host:9108/metrics
    WorkerSettings = worker_settings(tokens=..., metrics=metrics)

What a worker's jobs did since it started, each series named ``ghl_async_worker_...``:

- ``requests_total``, ``throttled_total`` (429s), ``retries_total``, ``messages_total``
  (rows committed), counters;
- ``limiter_wait_seconds_total``: time the jobs' requests waited for a slot of their
  location's shared budget;
- ``locations{state="running|done|failed"}``: locations running now (a gauge) and
  settled by this worker (only ever grows).

Each :class:`WorkerMetrics` has a registry of its own: two in one process never clash.
"""

from __future__ import annotations

from typing import Any

try:
    from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "ghl_async.export.metrics needs prometheus-client: pip install 'ghl-async[metrics]'"
    ) from exc

from ghl_async.stats import ClientStats

__all__ = ["WorkerMetrics"]

_STATES = ("running", "done", "failed")


class WorkerMetrics:
    """The counters of one worker process, served over HTTP by :meth:`serve`.

    Implements :class:`ghl_async.export.jobs.JobMetrics`: jobs report each change.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        name = "ghl_async_worker"
        self.requests = Counter(
            f"{name}_requests", "Requests sent by this worker's jobs", registry=self.registry
        )
        self.throttled = Counter(
            f"{name}_throttled", "429 replies seen by this worker's jobs", registry=self.registry
        )
        self.retries = Counter(
            f"{name}_retries",
            "Requests repeated after a retryable failure",
            registry=self.registry,
        )
        self.messages = Counter(
            f"{name}_messages", "Messages committed to the sinks", registry=self.registry
        )
        self.limiter_wait = Counter(
            f"{name}_limiter_wait_seconds",
            "Seconds requests waited for a slot of their location's budget",
            registry=self.registry,
        )
        self.locations = Gauge(
            f"{name}_locations",
            "Locations running now, and done or failed on this worker since it started",
            ["state"],
            registry=self.registry,
        )
        for state in _STATES:
            self.locations.labels(state=state)
        self._server: Any = None

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Serve ``/metrics`` on ``port`` (0: any free one) in a thread; returns the port."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        self._server = server
        return int(server.server_address[1])

    def close(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def location(self, state: str, change: int) -> None:
        """A location entering (+1) or leaving (-1) a state; ``queued`` is not shown."""
        if state in _STATES and (change > 0 or state == "running"):
            self.locations.labels(state=state).inc(change)

    def client(
        self, stats: ClientStats, messages: int, before: tuple[int, ...]
    ) -> tuple[int, ...]:
        """Add a job's client counts since ``before`` (what this returned last time)."""
        now = (stats.requests, stats.throttled, stats.retries, messages)
        requests, throttled, retries, written = (a - b for a, b in zip(now, before, strict=True))
        self.requests.inc(max(0, requests))
        self.throttled.inc(max(0, throttled))
        self.retries.inc(max(0, retries))
        self.messages.inc(max(0, written))
        return now

    def waited(self, seconds: float) -> None:
        """A request waited ``seconds`` for its limiter."""
        self.limiter_wait.inc(max(0.0, seconds))
