"""The tenant controls: pause, resume, release, purge, mark deleted, and what is known
about a tenant (its state, its held tasks, the paused tenants)."""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from celery_tenant_gate.config.settings import GateConfig
from celery_tenant_gate.io.store.deadletters import DeadLetters
from celery_tenant_gate.io.store.lease import renewed
from celery_tenant_gate.model.held import HeldMessage, HeldQueues, TaskRef
from celery_tenant_gate.model.ids import compile_pattern, validate_tenant_id
from celery_tenant_gate.model.record import TenantRecord
from celery_tenant_gate.model.verdicts import Verdict

from . import signals
from .hooks import GateHooks
from .lookup import TenantStates
from .movelock import MoveLock
from .report import letter, tell, tell_dropped

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


class TenantControls:
    """Moves a tenant's work in and out of its queue, by hand or for the sweep.

    *hooks* is the gate's list (shared: hooks added later are told too); *queue_for*
    names the queue that holds a tenant's tasks.
    """

    def __init__(
        self,
        config: GateConfig,
        states: TenantStates,
        held: HeldQueues,
        dead: DeadLetters,
        *,
        hooks: list[GateHooks],
        queue_for: Callable[[str], str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.states = states
        self.held_queues = held
        self.dead = dead
        self.hooks = hooks
        self.queue_for = queue_for
        self._clock = clock
        self._pattern = compile_pattern(config.tenant_id_pattern)

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
            tell(self.hooks, "on_released", lambda hooks: hooks.on_released(ctx, tasks))

    def purge(self, context_id: str, reason: str = "purged by hand") -> int:
        """Drop every held task of the tenant into its dead-letter place."""
        ctx = validate_tenant_id(context_id, self._pattern)
        queue = self.queue_for(ctx)
        now = self._clock()

        def keep(batch: list[HeldMessage]) -> None:
            self.dead.record(ctx, [letter(message, reason, now) for message in batch])
            tell_dropped(self.hooks, ctx, batch, reason)

        with self._moving(ctx):
            dropped = self.held_queues.drain(queue, keep)
        if dropped:
            logger.warning("tenant-gate: dropped %d held task(s) of %s: %s", dropped, ctx, reason)
        return dropped

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

    def _moving(self, ctx: str) -> MoveLock:
        return MoveLock(self.states.store, ctx, self.config.lock_timeout)
