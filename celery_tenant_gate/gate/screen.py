"""The hot path: run, hold or drop each task of a tenant, as it is received
(:meth:`Screening.screen`, in the worker's consumer) and again right before its body
(:meth:`Screening.recheck`, in the pool process)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis

from celery_tenant_gate.config.settings import GateConfig
from celery_tenant_gate.io.broker.amqp_queues import destination_queue, is_amqp
from celery_tenant_gate.io.broker.holding import ConfirmedProducers, hold_message, hold_request
from celery_tenant_gate.io.store.deadletters import INVALID_TENANT, DeadLetters
from celery_tenant_gate.model.carrier import (
    request_was_held,
    tenant_from_call,
    tenant_from_headers,
    tenant_from_request,
    was_held,
)
from celery_tenant_gate.model.errors import InvalidTenantId, StoreUnavailable
from celery_tenant_gate.model.held import HeldMessage, TaskRef
from celery_tenant_gate.model.ids import compile_pattern, validate_tenant_id
from celery_tenant_gate.model.verdicts import Verdict

from . import signals
from .hooks import GateHooks
from .lookup import TenantStates
from .report import dead_letter, tell, tell_dropped, why

logger = logging.getLogger(__name__)

#: How many well-formed tenant ids are remembered (then it starts over).
_VALID_IDS_MAX = 10_000


class Screening:
    """Decides per task message, and holds or drops it when its tenant may not run."""

    def __init__(
        self,
        app: Any,
        config: GateConfig,
        states: TenantStates,
        dead: DeadLetters,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.app = app
        self.config = config
        self.states = states
        self.dead = dead
        #: Told what the gate did (metrics, Celery task events); see :mod:`.hooks`.
        self.hooks: list[GateHooks] = []
        self._clock = clock
        self._pattern = compile_pattern(config.tenant_id_pattern)
        #: Tenant ids already found well-formed (the hot path skips the two regexes).
        self._valid_ids: set[str] = set()
        # RabbitMQ: holds are confirmed by the broker before the original is acked.
        # (Redis answers every LPUSH: nothing to confirm.)
        self._amqp = is_amqp(app)
        self._confirmed = ConfirmedProducers(app) if self._amqp else None

    def _destination(self, delivery_info: Any) -> str | None:
        # RabbitMQ only: a copy held through the hold exchange is released by the
        # broker itself (dead-lettering), when the queue it was meant for is known.
        if not self._amqp or not self.config.amqp_release_by_broker:
            return None
        return destination_queue(self.app, delivery_info)

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
        """The queue that holds the tenant's tasks."""
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
            dead_letter(self.dead, INVALID_TENANT, invalid, reason, self._clock())
            tell_dropped(self.hooks, INVALID_TENANT, [invalid], reason)
            return Verdict.DROP
        verdict = self.states.verdict(ctx, wait=False)
        if verdict is Verdict.HOLD and was_held(message.headers):
            verdict = self._released(ctx)
        if verdict is not Verdict.RUN and revoked():
            return None
        if verdict is not Verdict.RUN and self.states.health.down:
            # A hold is noted in the store, a drop recorded there: neither can be done
            # now. The caller keeps the task and screens it again later.
            raise StoreUnavailable(f"cannot hold or drop a task of {ctx}: the store is down")
        if verdict is Verdict.HOLD:
            queue = self.queue_for(ctx)
            # Noted before publishing: if Redis cannot take it, nothing is published
            # and the message is kept for later, rather than held where no sweep looks.
            self._mark_held(ctx)
            hold_message(
                self.app,
                message,
                queue,
                producers=self._confirmed,
                amqp=self._amqp,
                destination=self._destination(message.delivery_info),
            )
            self._after_hold(ctx, queue, message.headers)
        elif verdict is Verdict.DROP:
            try:
                self._drop(ctx, _raw_of(message))
            except redis.RedisError as exc:
                raise self._store_failed(ctx, exc) from exc
        return verdict

    def _mark_held(self, ctx: str) -> None:
        try:
            self.states.store.mark_held(ctx, self._clock())
        except redis.RedisError as exc:
            raise self._store_failed(ctx, exc) from exc

    def _store_failed(self, ctx: str, exc: redis.RedisError) -> StoreUnavailable:
        """The store failed *exc*: taken as down (nothing waits on it until it is back)."""
        self.states.health.failed(exc)
        return StoreUnavailable(f"cannot hold or drop a task of {ctx}: {exc}")

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
        if verdict is Verdict.HOLD and request_was_held(request):
            verdict = self._released(ctx)
        if (
            verdict is not Verdict.RUN
            and self.states.health.down
            and self.states.last_seen(ctx) is None
        ):
            # This pool process cannot read the store and knows nothing of the tenant;
            # the consumer, which let the task through a moment ago, did: its verdict
            # stands (holding here would fail, and send the task round and round).
            verdict = Verdict.RUN
        if verdict is Verdict.HOLD:
            self.hold_running(task, request, ctx)
        elif verdict is Verdict.DROP:
            self.drop_running(task, request, ctx)
        elif self.hooks:
            tell(self.hooks, "on_run", lambda hooks: hooks.on_run(ctx, task.name))
        return verdict

    def hold_running(self, task: Any, request: Any, ctx: str) -> None:
        """Hold the task running in this pool process (its *request*): back to the
        tenant's queue with its id, args and kwargs, no retry counted; the tenant is
        paused (by ``gate``) for every worker unless it is paused already."""
        queue = self.queue_for(ctx)
        self.states.store.mark_held(ctx, self._clock())
        hold_request(
            task,
            queue,
            ctx,
            producers=self._confirmed,
            amqp=self._amqp,
            destination=self._destination(request.delivery_info),
        )
        self._after_hold(ctx, queue, {"id": request.id, "task": task.name})

    def drop_running(self, task: Any, request: Any, ctx: str) -> None:
        """Drop the task running in this pool process: dead-lettered, ``task_dropped``."""
        self._drop(
            ctx,
            HeldMessage(
                headers={"id": request.id, "task": task.name, "retries": request.retries},
                body=repr((request.args, request.kwargs)).encode(),
                content_type="text/x-python-repr",
                content_encoding="utf-8",
            ),
        )

    def _released(self, ctx: str) -> Verdict:
        """The verdict for a task of *ctx* that was held before: while its tenant is
        being resumed, it runs (new tasks wait behind it); from the cached record."""
        record = self.states.record(ctx, wait=False)
        return self.states.policy.decide(record, self._clock(), released=True)

    def _after_hold(self, ctx: str, queue: str, headers: Any) -> None:
        # The task is safe in its queue now; what follows is bookkeeping, which must
        # not make the caller requeue it (that would hold it twice).
        try:
            self._note_hold(ctx, queue, headers)
        except Exception:
            logger.exception("tenant-gate: held a task of %s but could not note it", ctx)

    def _note_hold(self, ctx: str, queue: str, headers: Any) -> None:
        record = self.states.record(ctx, wait=False)
        reason = why(record)
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
            tell(self.hooks, "on_held", lambda hooks: hooks.on_held(ctx, task, reason))

    def _drop(self, ctx: str, message: HeldMessage) -> None:
        reason = f"tenant dropped: {why(self.states.record(ctx, wait=False))}"
        dead_letter(self.dead, ctx, message, reason, self._clock())
        tell_dropped(self.hooks, ctx, [message], reason)


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
