"""Celery task events for what the gate does: ``task-held``, ``task-released`` and
``task-dropped``, so that Flower and other event consumers see tasks wait and come back.

Sent by workers that send task events (``celery worker -E``, or
``worker_send_task_events = True``), like Celery's own ``task-received`` and
``task-succeeded``: on the worker's consumer thread through the worker's own event
dispatcher (buffered and flushed by its event loop, as Celery does); elsewhere (the
pool processes, the sweeper thread) through a dispatcher on a producer from the app's
pool, a release's events sent in batches. Every event has ``uuid`` (the task id),
``name`` (the task name) and ``tenant`` (the tenant id); ``task-held`` adds ``queue``
and ``reason``, ``task-released`` adds ``queue`` (where it went back to),
``task-dropped`` adds ``reason``.

Celery's event state (``app.events.State``, Flower) shows them as the task states
``HELD``, ``RELEASED`` and ``DROPPED``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from celery_tenant_gate.gate.hooks import GateHooks
from celery_tenant_gate.model.held import TaskRef

logger = logging.getLogger(__name__)

#: Events sent as one message, at most, from outside the consumer thread.
BATCH = 500

_Event = tuple[str, dict[str, Any]]


class TaskEvents(GateHooks):
    """Sends the gate's task events for one worker.

    *consumer_dispatcher* returns the consumer's event dispatcher (it is replaced when
    the broker connection is), used only on *consumer_thread*.
    """

    def __init__(
        self,
        app: Any,
        hostname: str,
        consumer_dispatcher: Callable[[], Any],
        consumer_thread: int | None,
    ) -> None:
        self.app = app
        self.hostname = hostname
        self.consumer_dispatcher = consumer_dispatcher
        self.consumer_thread = consumer_thread

    @classmethod
    def for_consumer(cls, consumer: Any) -> TaskEvents:
        return cls(
            consumer.app,
            consumer.hostname,
            lambda: getattr(consumer, "event_dispatcher", None),
            None,  # set by start(), on the consumer's thread
        )

    def start(self) -> None:
        """Call on the consumer's thread (the worker's main thread)."""
        self.consumer_thread = threading.get_ident()

    def on_held(self, context_id: str, task: TaskRef, reason: str) -> None:
        fields = _fields(context_id, task, queue=task.queue, reason=reason)
        self.send([("task-held", fields)])

    def on_released(self, context_id: str, tasks: Sequence[TaskRef]) -> None:
        self.send([("task-released", _fields(context_id, t, queue=t.queue)) for t in tasks])

    def on_dropped(self, context_id: str, tasks: Sequence[TaskRef], reason: str) -> None:
        self.send([("task-dropped", _fields(context_id, t, reason=reason)) for t in tasks])

    def send(self, events: list[_Event]) -> None:
        if not events:
            return
        dispatcher = None
        if threading.get_ident() == self.consumer_thread:
            dispatcher = self.consumer_dispatcher()
        if dispatcher is not None:
            for kind, fields in events:
                dispatcher.send(kind, **fields)
            return
        self._send_pooled(events)

    def _send_pooled(self, events: list[_Event]) -> None:
        app = self.app
        with app.amqp.producer_pool.acquire(block=True) as producer:
            dispatcher = app.events.Dispatcher(
                producer.connection,
                self.hostname,
                True,
                producer.channel,
                buffer_while_offline=False,
                buffer_group=["task"] if len(events) > 1 else None,
                buffer_limit=BATCH,
            )
            try:
                for kind, fields in events:
                    dispatcher.send(kind, **fields)
                dispatcher.flush()
            finally:
                dispatcher.close()


def _fields(context_id: str, task: TaskRef, **extra: str) -> dict[str, Any]:
    return {"uuid": task.task_id, "name": task.task_name, "tenant": context_id, **extra}
