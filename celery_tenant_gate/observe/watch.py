"""Wiring what the gate tells the outside: metrics for an app's gate, and, in a
worker, Celery task events and the ``/metrics`` endpoint."""

from __future__ import annotations

import logging
from typing import Any

from celery_tenant_gate.gate.gate import Gate
from celery_tenant_gate.io import metrics

from .metrics import MetricsHooks, count_store_losses, count_tenant_changes
from .task_events import TaskEvents

logger = logging.getLogger(__name__)


def watch(gate: Gate) -> None:
    """Count what *gate* does, when its app's ``tenant_gate_metrics`` is on."""
    if not gate.config.metrics or any(isinstance(h, MetricsHooks) for h in gate.hooks):
        return
    gate.hooks.append(MetricsHooks(metrics.enable()))
    count_tenant_changes()
    count_store_losses()
    metrics.register(
        metrics.GateCollector(
            paused=lambda: len(gate.paused()),
            held=lambda: held_total(gate),
            cache=lambda: (gate.states.hits, gate.states.misses),
        )
    )


def held_total(gate: Gate) -> int:
    """Messages waiting in every tenant queue that sweeps look at."""
    queues = [gate.queue_for(ctx) for ctx in gate.states.store.held_tenants()]
    return sum(gate.held_queues.counts(queues).values()) if queues else 0


class WorkerWatch:
    """In a worker: task events (with ``-E``) and the metrics endpoint
    (``tenant_gate_metrics_port``). Made by the consumer bootstep."""

    def __init__(self, consumer: Any, gate: Gate, *, task_events: bool) -> None:
        self.consumer = consumer
        self.gate = gate
        self.events: TaskEvents | None = None
        if task_events:
            self.events = TaskEvents.for_consumer(consumer)
            gate.hooks.append(self.events)
        self.server: Any = None

    def start(self) -> None:
        """On the consumer's thread, each time the consumer starts."""
        if self.events is not None:
            self.events.start()
        config = self.gate.config
        if config.metrics_port is None or self.server is not None:
            return
        watch(self.gate)  # done already when the gate was made; idempotent
        self.server = metrics.serve(
            config.metrics_port, config.metrics_address, metrics.registered()
        )
        where = f"{config.metrics_address}:{config.metrics_port}"
        if metrics.multiprocess_dir():
            logger.info("tenant-gate: metrics of all pool processes on %s/metrics", where)
        else:
            logger.info("tenant-gate: metrics on %s/metrics", where)
            if "prefork" in type(getattr(self.consumer, "pool", None)).__module__:
                logger.warning(
                    "tenant-gate: metrics: counts made in prefork pool processes (tasks "
                    "run, pre-start holds, control tasks) are not served: set "
                    "PROMETHEUS_MULTIPROC_DIR to an empty directory for them"
                )

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
