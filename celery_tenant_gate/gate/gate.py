"""The gate: run, hold or drop each tenant-scoped task, and the tenant controls
(``pause``, ``resume``, ``state``, ``held``, ``purge``) that hold and release.

One :class:`Gate` per app and process (see :func:`celery_tenant_gate.app.gate_for`).
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from celery_tenant_gate.config.settings import GateConfig
from celery_tenant_gate.io.broker.holding import (
    ConfirmedProducers,
    destination_queue,
    hold_message,
    hold_request,
)
from celery_tenant_gate.io.store.deadletters import INVALID_TENANT, DeadLetter, DeadLetters
from celery_tenant_gate.io.store.lease import renewed
from celery_tenant_gate.model.carrier import (
    tenant_from_call,
    tenant_from_headers,
    tenant_from_request,
)
from celery_tenant_gate.model.errors import InvalidTenantId
from celery_tenant_gate.model.held import HeldMessage, HeldQueues, TaskRef
from celery_tenant_gate.model.ids import compile_pattern, validate_tenant_id
from celery_tenant_gate.model.record import TenantRecord
from celery_tenant_gate.model.verdicts import Verdict

from . import signals
from .hooks import GateHooks
from .lookup import TenantStates

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TenantStatus:
    """What :meth:`Gate.state` tells about a tenant."""

    context_id: str
    verdict: Verdict
    record: TenantRecord | None
    queue: str
    held: int
    dropped: int


#: How many well-formed tenant ids a gate remembers (then it starts over).
_VALID_IDS_MAX = 10_000


class Gate:
    """Decides per task message, and moves a tenant's work in and out of its queue."""

    def __init__(
        self,
        app: Any,
        config: GateConfig,
        states: TenantStates,
        held: HeldQueues,
        dead: DeadLetters,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.app = app
        self.config = config
        self.states = states
        self.held_queues = held
        self.dead = dead
        self._clock = clock
        self._pattern = compile_pattern(config.tenant_id_pattern)
        #: Tenant ids already found well-formed (the hot path skips the two regexes).
        self._valid_ids: set[str] = set()
        #: Told what the gate did (metrics, Celery task events); see :mod:`.hooks`.
        self.hooks: list[GateHooks] = []
        # RabbitMQ: holds are confirmed by the broker before the original is acked.
        # (Redis answers every LPUSH: nothing to confirm.)
        transport = app.connection_for_write().transport_cls
        self._amqp = transport in {"amqp", "amqps", "pyamqp"}
        self._confirmed = ConfirmedProducers(app) if self._amqp else None

    def _destination(self, headers: Any, delivery_info: Any) -> str | None:
        # RabbitMQ only: a copy held through the hold exchange is released by the
        # broker itself (dead-lettering), when the queue it was meant for is known.
        if not self._amqp or not self.config.amqp_release_by_broker:
            return None
        return destination_queue(self.app, headers, delivery_info)

    def _valid(self, raw: object) -> str:
        """*raw* as a tenant id, checked (see :func:`validate_tenant_id`)."""
        if type(raw) is str and raw in self._valid_ids:
            return raw
        ctx = validate_tenant_id(raw, self._pattern)
        if type(ctx) is str:  # a subclass could compare equal to what it is not
            if len(self._valid_ids) >= _VALID_IDS_MAX:
                self._valid_ids.clear()
            self._valid_ids.add(ctx)
        return ctx

    def queue_for(self, context_id: str) -> str:
        return self.config.queue_template.format(ctx=context_id)

    # -- in the worker's consumer ---------------------------------------------------

    def screen(
        self,
        message: Any,
        task: Any,
        args: Any,
        kwargs: Any,
        revoked: Callable[[], bool] = lambda: False,
    ) -> Verdict | None:
        """Decide for a received message of a tenant-scoped task, and act on a hold or
        drop (the caller then acknowledges the message and does not run it).

        *revoked* is asked before a hold or a drop (only then: for a task that runs,
        Celery asks itself); when it says revoked or expired, nothing is done and None
        is returned (Celery's ``Request.revoked()`` acknowledges and records it).
        """
        raw = tenant_from_headers(message.headers)
        if raw is None:
            raw = tenant_from_call(args, kwargs, task.tenant_arg, task._tenant_arg_index())
        try:
            ctx = self._valid(raw)
        except InvalidTenantId as exc:
            if revoked():
                return None
            invalid, reason = _raw_of(message), f"invalid tenant: {exc}"
            self._dead_letter(INVALID_TENANT, invalid, reason)
            self._dropped(INVALID_TENANT, [invalid], reason)
            return Verdict.DROP
        verdict = self.states.verdict(ctx, wait=False)
        if verdict is not Verdict.RUN and revoked():
            return None
        if verdict is Verdict.HOLD:
            queue = self.queue_for(ctx)
            # Noted before publishing: if Redis cannot take it, nothing is published
            # and the message is requeued, rather than held where no sweep looks.
            self.states.store.mark_held(ctx, self._clock())
            hold_message(
                self.app,
                message,
                queue,
                producers=self._confirmed,
                amqp=self._amqp,
                destination=self._destination(message.headers, message.delivery_info),
            )
            self._after_hold(ctx, queue, message.headers)
        elif verdict is Verdict.DROP:
            self._drop(ctx, _raw_of(message))
        return verdict

    # -- in a pool process, right before the body -------------------------------------

    def recheck(self, task: Any, request: Any = None) -> Verdict:
        """For a task already in the pool: hold or drop it now if its tenant stopped
        running since the consumer let it through. *request*: ``task.request``, when
        the caller has it already."""
        if request is None:
            request = task.request
        raw = tenant_from_request(request)
        if raw is None:
            raw = tenant_from_call(
                request.args, request.kwargs, task.tenant_arg, task._tenant_arg_index()
            )
        ctx = self._valid(raw)
        verdict = self.states.verdict(ctx, wait=False)
        if verdict is Verdict.HOLD:
            queue = self.queue_for(ctx)
            self.states.store.mark_held(ctx, self._clock())
            hold_request(
                task,
                queue,
                ctx,
                producers=self._confirmed,
                amqp=self._amqp,
                destination=self._destination(request.headers, request.delivery_info),
            )
            self._after_hold(ctx, queue, {"id": request.id, "task": task.name})
        elif verdict is Verdict.DROP:
            self._drop(
                ctx,
                HeldMessage(
                    headers={"id": request.id, "task": task.name, "retries": request.retries},
                    body=repr((request.args, request.kwargs)).encode(),
                    content_type="text/x-python-repr",
                    content_encoding="utf-8",
                ),
            )
        elif self.hooks:
            self._tell("on_run", lambda hooks: hooks.on_run(ctx, task.name))
        return verdict

    def _after_hold(self, ctx: str, queue: str, headers: Any) -> None:
        # The task is safe in its queue now; what follows is bookkeeping, which must
        # not make the caller requeue it (that would hold it twice).
        try:
            self._note_hold(ctx, queue, headers)
        except Exception:
            logger.exception("tenant-gate: held a task of %s but could not note it", ctx)

    def _note_hold(self, ctx: str, queue: str, headers: Any) -> None:
        record = self.states.record(ctx, wait=False)
        reason = _why(record)
        paused_now = record is None or not record.paused
        if paused_now and self.states.set_paused(ctx, True, reason=reason, by="gate"):
            logger.info("tenant-gate: paused %s (%s)", ctx, reason)
            signals.tenant_paused.send(sender=ctx, context_id=ctx, reason=reason, by="gate")
        task = TaskRef(
            str((headers or {}).get("id", "")), str((headers or {}).get("task", "")), queue
        )
        logger.debug(
            "tenant-gate: held task %s[%s] of %s in %s", task.task_name, task.task_id, ctx, queue
        )
        signals.task_held.send(
            sender=ctx,
            context_id=ctx,
            task_id=task.task_id,
            task_name=task.task_name,
            queue=queue,
            reason=reason,
        )
        if self.hooks:
            self._tell("on_held", lambda hooks: hooks.on_held(ctx, task, reason))

    def _drop(self, ctx: str, message: HeldMessage) -> None:
        record = self.states.record(ctx, wait=False)
        reason = f"tenant dropped: {_why(record)}"
        self._dead_letter(ctx, message, reason)
        self._dropped(ctx, [message], reason)

    def _dropped(self, ctx: str, messages: Sequence[HeldMessage], reason: str) -> None:
        for message in messages:
            signals.task_dropped.send(
                sender=ctx,
                context_id=ctx,
                task_id=message.task_id,
                task_name=message.task_name,
                reason=reason,
            )
        if self.hooks:
            tasks = [TaskRef(m.task_id, m.task_name, "") for m in messages]
            self._tell("on_dropped", lambda hooks: hooks.on_dropped(ctx, tasks, reason))

    def _tell(self, name: str, call: Callable[[GateHooks], None]) -> None:
        """*call* each of the hooks (its method *name*); one that fails is logged."""
        for hooks in self.hooks:
            try:
                call(hooks)
            except Exception:
                logger.exception("tenant-gate: %s.%s failed", type(hooks).__name__, name)

    def _dead_letter(self, ctx: str, message: HeldMessage, reason: str) -> None:
        logger.warning(
            "tenant-gate: dropped task %s[%s] of %s: %s",
            message.task_name,
            message.task_id,
            ctx,
            reason,
        )
        self.dead.record(ctx, [_letter(message, reason, self._clock())])

    # -- controls -------------------------------------------------------------------

    def pause(self, context_id: str, reason: str = "", *, by: str = "manual") -> bool:
        """Hold the tenant's tasks on every worker from now on, until :meth:`resume`.

        Returns False if it was paused already (the reason is updated).
        """
        ctx = validate_tenant_id(context_id, self._pattern)
        changed = self.states.set_paused(ctx, True, reason=reason, by=by)
        if changed:
            logger.info("tenant-gate: paused %s by %s (%s)", ctx, by, reason)
            signals.tenant_paused.send(sender=ctx, context_id=ctx, reason=reason, by=by)
        return changed

    def resume(self, context_id: str) -> int:
        """Let the tenant's tasks run again, and release its held tasks, in order.

        Returns how many held tasks were released. If the tenant's state still says
        hold, the gate holds its tasks again (and pauses it, by ``gate``).
        """
        ctx = validate_tenant_id(context_id, self._pattern)
        self.states.store.set_fields(
            ctx, {"resume_not_before": "0", "delete_after": "0", "deleted": "0"}
        )
        self.states.set_paused(ctx, False, reason="")
        released = self._release(ctx)
        logger.info("tenant-gate: resumed %s, %d held task(s) released", ctx, released)
        signals.tenant_resumed.send(sender=ctx, context_id=ctx, released=released)
        return released

    def release(self, context_id: str) -> int:
        """Move the tenant's held tasks back to their queues (without unpausing)."""
        ctx = validate_tenant_id(context_id, self._pattern)
        moved = self._release(ctx)
        if moved:
            logger.info("tenant-gate: released %d held task(s) of %s", moved, ctx)
        return moved

    def _release(self, ctx: str) -> int:
        queue = self.queue_for(ctx)
        # Only when someone listens: naming every released task costs a little time.
        listening = self.hooks or signals.task_released.receivers
        told = functools.partial(self._released, ctx) if listening else None
        lock = self._moving(ctx)
        # A release of millions of tasks outlives the lock's timeout: renewed meanwhile.
        with lock, renewed(self.states.store, lock.key, lock.token, lock.timeout):
            moved = self.held_queues.release(queue, marker=uuid.uuid4().hex, on_moved=told)
            # Kept in the held set for a while: a released message that the broker
            # requeues (a worker restarted or killed before acking it) goes back to
            # the tenant queue, and the sweep must find it there.
            self.states.store.mark_held(ctx, self._clock())
        return moved

    def _released(self, ctx: str, tasks: list[TaskRef]) -> None:
        for task in tasks:
            logger.debug(
                "tenant-gate: released task %s[%s] of %s", task.task_name, task.task_id, ctx
            )
            signals.task_released.send(
                sender=ctx,
                context_id=ctx,
                task_id=task.task_id,
                task_name=task.task_name,
                queue=task.queue,
            )
        if self.hooks:
            self._tell("on_released", lambda hooks: hooks.on_released(ctx, tasks))

    def purge(self, context_id: str, reason: str = "purged by hand") -> int:
        """Drop every held task of the tenant into its dead-letter place."""
        ctx = validate_tenant_id(context_id, self._pattern)
        queue = self.queue_for(ctx)
        now = self._clock()

        def keep(batch: list[HeldMessage]) -> None:
            self.dead.record(ctx, [_letter(message, reason, now) for message in batch])
            self._dropped(ctx, batch, reason)

        with self._moving(ctx):
            dropped = self.held_queues.drain(queue, keep)
        if dropped:
            logger.warning("tenant-gate: dropped %d held task(s) of %s: %s", dropped, ctx, reason)
        return dropped

    def state(self, context_id: str, *, look_up: bool = True) -> TenantStatus:
        """The tenant's verdict, record, held and dropped counts.

        With ``look_up=False`` only the shared store is read, as it is: the State API
        is not asked even when its answer is due (what ``celery tenant-gate status``
        shows).
        """
        ctx = validate_tenant_id(context_id, self._pattern)
        queue = self.queue_for(ctx)
        if look_up:
            verdict, record = self.states.verdict(ctx), self.states.record(ctx)
        else:
            record = self.states.store.get(ctx)
            verdict = self.states.policy.decide(record, self._clock())
        return TenantStatus(
            context_id=ctx,
            verdict=verdict,
            record=record,
            queue=queue,
            held=self.held_queues.count(queue),
            dropped=self.dead.count(ctx),
        )

    def held(self, context_id: str, limit: int = 100) -> list[HeldMessage]:
        """The oldest *limit* held tasks of the tenant, oldest first."""
        ctx = validate_tenant_id(context_id, self._pattern)
        return self.held_queues.peek(self.queue_for(ctx), limit)

    def paused(self) -> dict[str, float]:
        """Every paused tenant, with when it was paused."""
        return self.states.store.paused()

    # -- the sweep: ends pauses that end by themselves ---------------------------------

    def sweep(self) -> dict[str, str]:
        """Resume tenants paused by the gate (or a notification) whose state runs again,
        drop the held work of deleted ones, and release stragglers (tasks held just
        as their tenant resumed). Returns what it did, per tenant."""
        done: dict[str, str] = {}
        store = self.states.store
        held = store.held_tenants()
        for ctx in sorted(set(store.paused()) | set(held)):
            try:
                what = self._sweep_one(ctx)
            except Exception:
                logger.exception("tenant-gate: sweep of %s failed; next sweep tries again", ctx)
                continue
            if what:
                done[ctx] = what
        self._forget_idle(held)
        return done

    def _forget_idle(self, held: dict[str, float]) -> None:
        """Stop sweeping tenant queues that stayed empty past the forget time."""
        cutoff = self._clock() - self.config.held_forget_after
        idle = {self.queue_for(ctx): ctx for ctx, last in held.items() if last < cutoff}
        if not idle:
            return
        # One connection for all of them (on RabbitMQ a connection a tenant would cost
        # a sweep more than its work).
        for queue, count in self.held_queues.counts(list(idle)).items():
            if count == 0:
                self.states.store.unmark_held(idle[queue])

    def _sweep_one(self, ctx: str) -> str:
        record = self.states.record(ctx)  # asks the State API when its answer is due
        if record is None:
            return ""
        now = self._clock()
        if record.deleted:
            dropped = self.purge(ctx, reason="tenant deleted")
            if self.held_queues.count(self.queue_for(ctx)) == 0:
                # Its tasks are dropped as they come from now on: nothing is left to
                # sweep, so sweeps do not grow with the tenants ever deleted.
                self.states.store.retire(ctx)
            return _say("dropped", dropped)
        if record.delete_after and now >= record.delete_after:
            return f"deleted unconfirmed, dropped {self.mark_deleted(ctx, 'Delete')}"
        waiting = record.paused_by == "webhook" and now < record.resume_not_before
        if (record.paused and not record.resumes_by_itself) or waiting:
            return ""
        if record.paused_by == "webhook" and record.learnt_at < record.paused_at:
            # Only an answer given after the notification says it is over.
            record = self.states.refresh(ctx) or record
        return self._follow_state(ctx, record, now)

    def _follow_state(self, ctx: str, record: TenantRecord, now: float) -> str:
        """Resume, release or drop as the tenant's state (not its pause) says."""
        verdict = self.states.policy.decide(replace(record, paused=False), now)
        if verdict is Verdict.RUN:
            if record.paused:
                return f"resumed, {self.resume(ctx)} released"
            if self.held_queues.count(self.queue_for(ctx)) == 0:
                return ""
            return _say("released stragglers:", self.release(ctx))
        if verdict is Verdict.DROP:
            if record.paused or record.delete_after:
                return f"deleted, dropped {self.mark_deleted(ctx, _why(record))}"
            return _say("dropped", self.purge(ctx, reason=f"tenant dropped: {_why(record)}"))
        return ""

    def mark_deleted(self, context_id: str, why: str) -> int:
        """Take the tenant as deleted: drop its held tasks, and every task from now on.
        Sends ``tenant_deleted``; returns how many held tasks were dropped."""
        ctx = validate_tenant_id(context_id, self._pattern)
        self.states.store.set_fields(ctx, {"deleted": "1"})
        self.states.cache.invalidate(ctx)
        dropped = self.purge(ctx, reason=f"tenant deleted ({why})")
        logger.warning(
            "tenant-gate: %s is deleted (%s); %d held task(s) dropped", ctx, why, dropped
        )
        signals.tenant_deleted.send(sender=ctx, context_id=ctx, state=why)
        return dropped

    def _moving(self, ctx: str) -> _MoveLock:
        return _MoveLock(self.states, ctx, self.config.lock_timeout)


class _MoveLock:
    """One mover at a time per tenant queue, cluster-wide (release and purge)."""

    def __init__(self, states: TenantStates, ctx: str, timeout: float) -> None:
        self.store = states.store
        self.key = f"_move.{ctx}"
        self.timeout = timeout
        self.token: str | None = None

    def __enter__(self) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            self.token = self.store.try_lock(self.key, self.timeout)
            if self.token is not None:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"another process is moving {self.key} for too long")
            time.sleep(0.01)  # a mover holds it for milliseconds

    def __exit__(self, *exc: object) -> None:
        if self.token is not None:
            self.store.unlock(self.key, self.token)


def _say(what: str, count: int) -> str:
    return f"{what} {count}" if count else ""


def _why(record: TenantRecord | None) -> str:
    if record is None or record.state is None:
        return "state unknown" + (f" ({record.error})" if record and record.error else "")
    if record.paused and record.pause_reason:
        return record.pause_reason
    return f"state {record.state.state.api_name}"


def _raw_of(message: Any) -> HeldMessage:
    body = message.body or b""
    if isinstance(body, str):  # py-amqp hands over decoded text
        body = body.encode(message.content_encoding or "utf-8")
    return HeldMessage(
        headers=dict(message.headers or {}),
        body=bytes(body),
        content_type=message.content_type or "",
        content_encoding=message.content_encoding or "",
        properties=dict(message.properties or {}),
    )


def _letter(message: HeldMessage, reason: str, at: float) -> DeadLetter:
    return DeadLetter.from_raw(
        headers=message.headers,
        body=message.body,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        reason=reason,
        at=at,
    )
