"""The worker side: a consumer bootstep that puts the gate in front of the pool and
starts the sweeper thread (:mod:`.sweeper`).

The gate wraps the consumer's ``on_task_request``: the one door every task goes
through on its way to the pool, straight from the broker and after waiting in the
ETA timer or a rate-limit bucket. There the message is not acknowledged yet,
whatever ``task_acks_late`` says, so a held task is re-published *before* its
message is acknowledged. (A ``task_prerun`` receiver could not do this: Celery
logs and swallows exceptions raised in signal receivers.)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

from celery import bootsteps

from celery_tenant_gate._compat import (
    consumer_qos,
    live_delivery_info,
    mark_acknowledged,
    request_acknowledged,
    request_message,
    requeue,
    revoked_check,
    set_task_handler,
    task_handler,
    worker_task_ready,
)
from celery_tenant_gate.app.singletons import gate_config, gate_for
from celery_tenant_gate.gate.gate import Gate
from celery_tenant_gate.io.broker.holding import restore_route
from celery_tenant_gate.model.errors import StoreUnavailable
from celery_tenant_gate.model.verdicts import Verdict
from celery_tenant_gate.observe.watch import WorkerWatch

from .parking import Parking
from .sweeper import Sweeper

logger = logging.getLogger(__name__)


def gated(
    gate: Gate, on_task_request: Callable[[Any], Any], timer: Any = None, qos: Any = None
) -> Callable[[Any], Any]:
    """Wrap the consumer's ``on_task_request`` with the gate. A task that cannot be
    screened is parked (:mod:`.parking`) on *timer* (the consumer's, so that the event
    loop goes on meanwhile), widening *qos* (the consumer's prefetch count) while it
    waits; without a timer, it goes back to the broker at once."""
    task_ready = worker_task_ready()

    def give_back(request: Any) -> None:
        try:
            requeue(request)
        finally:
            task_ready(request)

    def screened(request: Any, attempt: int) -> Any:
        task = request.task
        message = request_message(request)
        try:
            # A revoked or expired task is never held (Celery acks and records it).
            verdict = gate.screen(
                message, task, request.args, request.kwargs, revoked_check(request)
            )
        except Exception as exc:
            if _revoked(request):  # acknowledged and recorded by Celery: nothing to keep
                return None
            # Neither run it (its tenant may be away) nor lose it: keep it, still
            # unacknowledged, and try again later.
            if not isinstance(exc, StoreUnavailable) and attempt == 0:
                logger.exception("tenant-gate: could not screen task %s[%s]", task.name, request.id)
            if parking is None:
                give_back(request)
            else:
                parking.park(request, attempt + 1, exc)
            return None
        if verdict is Verdict.RUN:
            restore_route(message.headers, live_delivery_info(request))
            return on_task_request(request)
        if verdict is None:  # revoked
            return None
        acknowledge_now(request)
        task_ready(request)
        return None

    parking = None if timer is None else Parking(screened, give_back, timer, qos)

    def gated_on_task_request(request: Any) -> Any:
        if not getattr(request.task, "tenant_scoped", False):
            return on_task_request(request)
        return screened(request, 0)

    gated_on_task_request.parking = parking  # type: ignore[attr-defined]
    return gated_on_task_request


def _revoked(request: Any) -> bool:
    """Whether Celery finds *request* revoked or expired (False if it cannot tell)."""
    try:
        return bool(revoked_check(request)())
    except Exception:
        logger.exception("tenant-gate: could not tell whether task %s is revoked", request.id)
        return False


def acknowledge_now(request: Any) -> None:
    """Acknowledge a held or dropped task's message at once.

    Not with ``request.acknowledge()``: Celery defers that ack to its event loop's
    next round, and an ack deferred while kombu's hub runs its ready callbacks (its
    reader re-schedules itself there) waits for the next socket event. On RabbitMQ
    with a prefetch of 1 there is none (the broker sends nothing more until the
    ack), so the worker sat idle for seconds after each hold (seen in the demo).
    """
    if request_acknowledged(request):
        return
    try:
        request_message(request).ack()
    except Exception:
        # The broker will deliver it again; its held copy makes that a duplicate.
        logger.exception("tenant-gate: could not acknowledge task %s", request.id)
    mark_acknowledged(request)


class TenantGateStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Consumer bootstep added by :func:`celery_tenant_gate.install`."""

    label = "tenant-gate"

    def __init__(self, consumer: Any, **kwargs: Any) -> None:
        super().__init__(consumer, **kwargs)
        app = consumer.app
        gate_config(app)  # a bad setting stops the worker here, naming the key
        self.gate = gate_for(app)
        # Wrapped here, before the Tasks step builds the strategies that capture it.
        handler = gated(self.gate, task_handler(consumer), consumer.timer, consumer_qos(consumer))
        set_task_handler(consumer, handler)
        # Every worker of an installed app takes control tasks, whatever its -Q. Added
        # to the queues to consume before the task consumer is built: adding it once
        # the consumer runs races with messages already waiting (RabbitMQ delivers
        # them before Celery can handle them, and the worker dies).
        app.amqp.queues.select_add(self.gate.config.control_queue)
        self.sweeper: Sweeper | None = None
        # Celery task events (with -E) and the /metrics endpoint.
        self.watch = WorkerWatch(consumer, self.gate, task_events=bool(kwargs.get("task_events")))

    def start(self, consumer: Any) -> None:
        self.watch.start()
        if self.sweeper is None:
            self.sweeper = Sweeper(self.gate, self.gate.config.sweep_interval)
            self.sweeper.start()
            # A tenant whose state the background look-up finds running again (or for
            # the first time) is resumed and released by a sweep at once.
            self.gate.states.on_runnable.append(self.sweeper.wake)

    def shutdown(self, consumer: Any) -> None:
        if self.sweeper is not None:
            with contextlib.suppress(ValueError):
                self.gate.states.on_runnable.remove(self.sweeper.wake)
            self.sweeper.stop()
            self.sweeper = None
        self.watch.stop()
