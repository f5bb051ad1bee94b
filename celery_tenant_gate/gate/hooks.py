"""Hook points of the gate: told what it did with tasks, after it did it.

:class:`GateHooks` does nothing; the metrics (:mod:`celery_tenant_gate.metrics`) and
the Celery task events (:mod:`celery_tenant_gate.task_events`) are subclasses that
the wiring adds to ``Gate.hooks``. Users connect to the signals instead
(:mod:`celery_tenant_gate.signals`), which are sent one per task.

A hook's exception is logged and swallowed: it can never change what the gate does.
"""

from __future__ import annotations

from collections.abc import Sequence

from celery_tenant_gate.model.held import TaskRef


class GateHooks:
    """Base class: every method does nothing. Called in the process and thread
    where the gate acted (see the README's table of who sends what)."""

    def on_run(self, context_id: str, task_name: str) -> None:
        """A task passed the gate's last check and its body starts (pool process)."""

    def on_held(self, context_id: str, task: TaskRef, reason: str) -> None:
        """A task was put in its tenant's queue."""

    def on_released(self, context_id: str, tasks: Sequence[TaskRef]) -> None:
        """Held tasks went back to their queues (one call per release batch)."""

    def on_dropped(self, context_id: str, tasks: Sequence[TaskRef], reason: str) -> None:
        """Tasks were dropped into the tenant's dead-letter list."""
