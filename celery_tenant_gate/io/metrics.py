"""Prometheus metrics, optional: ``pip install 'celery-tenant-gate[prometheus]'`` and
``app.conf.tenant_gate_metrics = True``.

Until :func:`enable` is called, :func:`metrics` is a :class:`Metrics` whose methods do
nothing, and ``prometheus_client`` is never imported: it is not a dependency.

No metric is labelled by tenant (thousands of tenants would be thousands of time
series); the tenant is in the signals, the log lines and the Celery task events.
Tasks are labelled by task name, which your code bounds.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from celery_tenant_gate.model.errors import ConfigError

logger = logging.getLogger(__name__)

#: What happened to a task, the ``outcome`` label of ``tenant_gate_tasks_total``.
OUTCOMES = ("run", "held", "released", "dropped")


class Metrics:
    """What the package measures. This base does nothing: metrics are off."""

    enabled = False

    def tasks(self, outcome: str, task_name: str, count: int = 1) -> None:
        """*count* tasks named *task_name* were run, held, released or dropped."""

    def tenant_change(self, change: str) -> None:
        """A tenant was paused, resumed, deleted, moved or restored from a backup."""

    def state_api_request(self, seconds: float, error: str | None) -> None:
        """One HTTP request to the State API took *seconds*; *error* names its failure."""

    def state_api_refused(self, error: str) -> None:
        """A State API call was refused before any request (the circuit is open)."""

    def webhook_response(self, status: int) -> None:
        """The webhook answered a notification with HTTP *status*."""

    def store_lost(self) -> None:
        """This process found that the shared store lost its data."""


class PrometheusMetrics(Metrics):
    """:class:`Metrics` as ``prometheus_client`` counters and a histogram."""

    enabled = True

    def __init__(self, registry: Any = None) -> None:
        prometheus = _prometheus()
        registry = prometheus.REGISTRY if registry is None else registry

        def counter(name: str, doc: str, labels: Sequence[str] = ()) -> Any:
            return prometheus.Counter(name, doc, labels, registry=registry)

        self._tasks = counter(
            "tenant_gate_tasks",
            "Tenant-scoped tasks by what the gate did: run, held, released, dropped.",
            ["outcome", "task"],
        )
        self._changes = counter(
            "tenant_gate_tenant_changes",
            "Tenants paused, resumed, deleted, moved or restored from a backup.",
            ["change"],
        )
        self._requests = counter(
            "tenant_gate_state_api_requests",
            "HTTP requests sent to the State API (each retry included).",
        )
        self._errors = counter(
            "tenant_gate_state_api_errors",
            "Failed State API requests, and calls the open circuit refused, by error.",
            ["error"],
        )
        self._seconds = prometheus.Histogram(
            "tenant_gate_state_api_seconds",
            "Time from sending a State API request to its whole answer.",
            registry=registry,
        )
        self._webhook = counter(
            "tenant_gate_webhook_responses",
            "Webhook answers to notifications, by HTTP status.",
            ["status"],
        )
        self._store_losses = counter(
            "tenant_gate_store_losses",
            "Times a process found the shared store had lost its data (restarted empty, "
            "flushed, failed over).",
        )

    def tasks(self, outcome: str, task_name: str, count: int = 1) -> None:
        self._tasks.labels(outcome, task_name).inc(count)

    def tenant_change(self, change: str) -> None:
        self._changes.labels(change).inc()

    def state_api_request(self, seconds: float, error: str | None) -> None:
        self._requests.inc()
        self._seconds.observe(seconds)
        if error is not None:
            self._errors.labels(error).inc()

    def state_api_refused(self, error: str) -> None:
        self._errors.labels(error).inc()

    def webhook_response(self, status: int) -> None:
        self._webhook.labels(str(status)).inc()

    def store_lost(self) -> None:
        self._store_losses.inc()


class _Process:
    """What this process has enabled."""

    metrics: Metrics = Metrics()
    collector: GateCollector | None = None
    lock = threading.Lock()


def _prometheus() -> Any:
    """prometheus_client, imported only once metrics are on: it is an optional extra."""
    try:
        import prometheus_client  # noqa: PLC0415
        import prometheus_client.core  # noqa: PLC0415
        import prometheus_client.multiprocess  # noqa: PLC0415
    except ImportError:
        raise ConfigError(
            "tenant_gate_metrics is on but prometheus_client is not installed: "
            "pip install 'celery-tenant-gate[prometheus]'"
        ) from None
    return prometheus_client


def metrics() -> Metrics:
    """This process's metrics: a no-op until :func:`enable`."""
    return _Process.metrics


def enable() -> Metrics:
    """Turn Prometheus metrics on for this process (idempotent) and return them.

    Raises :class:`ConfigError` when ``prometheus_client`` is not installed.
    """
    with _Process.lock:
        if not _Process.metrics.enabled:
            _Process.metrics = PrometheusMetrics()
        return _Process.metrics


class GateCollector:
    """Values read when scraped: paused tenants and held messages (from the shared
    store and the broker, so the same on every worker), and this process's cache hits
    and misses. A source that cannot be read is left out of that scrape (logged)."""

    def __init__(
        self,
        paused: Callable[[], int],
        held: Callable[[], int],
        cache: Callable[[], tuple[int, int]],
    ) -> None:
        self.paused = paused
        self.held = held
        self.cache = cache

    _GAUGES = (
        ("tenant_gate_paused_tenants", "Tenants paused now (all workers).", "paused"),
        ("tenant_gate_held_messages", "Task messages waiting in tenant queues.", "held"),
    )
    _HITS = ("tenant_gate_cache_hits", "Look-ups answered by this process's cache.")
    _MISSES = (
        "tenant_gate_cache_misses",
        "Look-ups that read the shared store (and maybe the State API).",
    )

    def describe(self) -> Iterator[Any]:
        """The metrics' names, without reading anything (for the registry)."""
        core = _prometheus().core
        for name, doc, _ in self._GAUGES:
            yield core.GaugeMetricFamily(name, doc)
        yield core.CounterMetricFamily(*self._HITS)
        yield core.CounterMetricFamily(*self._MISSES)

    def collect(self) -> Iterator[Any]:
        core = _prometheus().core
        for name, doc, source in self._GAUGES:
            try:
                value = getattr(self, source)()
            except Exception as exc:
                logger.warning("tenant-gate: metrics: cannot read %s: %s", name, exc)
                continue
            yield core.GaugeMetricFamily(name, doc, value=value)
        hits, misses = self.cache()
        yield core.CounterMetricFamily(*self._HITS, value=hits)
        yield core.CounterMetricFamily(*self._MISSES, value=misses)


def multiprocess_dir() -> str | None:
    """``PROMETHEUS_MULTIPROC_DIR``: where every process writes its counts, if set."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def serve(port: int, address: str, collector: GateCollector | None = None) -> Any:
    """Serve ``/metrics`` on *address*:*port* from a thread; returns the server.

    With ``PROMETHEUS_MULTIPROC_DIR`` set, the counts are those of every process that
    writes there (prometheus_client's multiprocess mode), plus *collector*; else this
    process's registry (which holds *collector* already, see :func:`register`).
    """
    prometheus = _prometheus()
    registry = prometheus.REGISTRY
    if multiprocess_dir():
        registry = prometheus.CollectorRegistry()
        prometheus.multiprocess.MultiProcessCollector(registry)
        if collector is not None:
            registry.register(collector)
    server, _ = prometheus.start_http_server(port, address, registry)
    return server


def registered() -> GateCollector | None:
    """The collector :func:`register` added, if any."""
    return _Process.collector


def register(collector: GateCollector) -> GateCollector:
    """Add *collector* to prometheus_client's default registry, once per process
    (the first app that enables metrics gives the gauges); returns the one in use."""
    with _Process.lock:
        if _Process.collector is None:
            _prometheus().REGISTRY.register(collector)
            _Process.collector = collector
        return _Process.collector
