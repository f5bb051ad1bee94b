"""Counting what the gate does in Prometheus metrics (:mod:`celery_tenant_gate.io.metrics`):
tasks run, held, released and dropped (a gate hook) and tenant changes (signals)."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Sequence
from typing import Any

from celery_tenant_gate.gate import signals
from celery_tenant_gate.gate.hooks import GateHooks
from celery_tenant_gate.io import metrics as sink
from celery_tenant_gate.io.metrics import Metrics
from celery_tenant_gate.model.held import TaskRef

#: The ``change`` label of ``tenant_gate_tenant_changes_total``, one per tenant signal.
CHANGES = {
    "tenant_paused": "paused",
    "tenant_resumed": "resumed",
    "tenant_deleted": "deleted",
    "tenant_moved": "moved",
    "tenant_backup_restored": "backup_restored",
}


def count_tenant_changes() -> None:
    """Count every tenant signal this process sends (idempotent)."""
    for name, change in CHANGES.items():
        getattr(signals, name).connect(
            _count_change(change), weak=False, dispatch_uid=f"tenant_gate.metrics.{name}"
        )


def count_store_losses() -> None:
    """Count every store loss this process notices (idempotent)."""
    signals.store_lost.connect(
        _count_store_loss, weak=False, dispatch_uid="tenant_gate.metrics.store_lost"
    )


def _count_store_loss(**_: Any) -> None:
    sink.metrics().store_lost()


def _count_change(change: str) -> Callable[..., None]:
    def receiver(**_: Any) -> None:
        sink.metrics().tenant_change(change)

    return receiver


class MetricsHooks(GateHooks):
    """Counts what the gate does with tasks (``tenant_gate_tasks_total``)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def on_run(self, context_id: str, task_name: str) -> None:
        self.metrics.tasks("run", task_name)

    def on_held(self, context_id: str, task: TaskRef, reason: str) -> None:
        self.metrics.tasks("held", task.task_name)

    def on_released(self, context_id: str, tasks: Sequence[TaskRef]) -> None:
        self._count("released", tasks)

    def on_dropped(self, context_id: str, tasks: Sequence[TaskRef], reason: str) -> None:
        self._count("dropped", tasks)

    def _count(self, outcome: str, tasks: Sequence[TaskRef]) -> None:
        for name, count in Tally(task.task_name for task in tasks).items():
            self.metrics.tasks(outcome, name, count)
