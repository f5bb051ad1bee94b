"""The tenant controls: pause, resume, release, purge, mark deleted, and what is known
about a tenant (its state, its held tasks, the paused tenants)."""

from __future__ import annotations

import functools
import logging
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from celery_tenant_gate.config.settings import GateConfig
from celery_tenant_gate.io.store.deadletters import DeadLetters
from celery_tenant_gate.model.held import HeldMessage, HeldQueues, TaskRef
from celery_tenant_gate.model.ids import compile_pattern, validate_tenant_id
from celery_tenant_gate.model.record import TenantRecord
from celery_tenant_gate.model.verdicts import Verdict

from . import signals
from .hooks import GateHooks
from .lookup import TenantStates
from .movelock import MoveBusy, MoveLock
from .report import letter, tell, tell_dropped

logger = logging.getLogger(__name__)

#: Most releases of a resume while its tenant is still paused (each takes what was
#: held during the one before); what is held after them is released after the unpause.
PAUSED_PASSES = 3


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
        """Let the tenant's tasks run again, and release its held tasks, in order:
        the held ones run before those given after the resume.

        The resume is recorded first, so that if this process dies any worker's
        sweep finishes it (see :meth:`finish_resume`). Returns how many held tasks
        were released. If the tenant's state still says hold, the gate holds its
        tasks again (and pauses it, by ``gate``). Waits at most
        ``tenant_gate_lock_timeout`` for another process moving its tasks
        (:class:`~.movelock.MoveBusy`).
        """
        ctx = validate_tenant_id(context_id, self._pattern)
        stamp = self._stamp()
        was = self.states.store.get(ctx)
        self._begin_resume(ctx, stamp)
        with self._moving(ctx, self.config.lock_timeout):
            return self._resume(ctx, stamp, fresh=not (was and was.resuming))

    def finish_resume(self, context_id: str) -> int | None:
        """Resume the tenant, or finish a resume that was interrupted, unless another
        process keeps moving its tasks (then None: it finishes the resume, or its lease
        lapses and the next sweep does). Waits at most one lease for the move lock (a
        holder that died leaves it that long). Returns how many were released."""
        ctx = validate_tenant_id(context_id, self._pattern)
        try:
            with self._moving(ctx, self.config.lock_lease):
                was = self.states.store.get(ctx)
                if was is None or not (was.resuming or was.resumes_by_itself):
                    # Resumed meanwhile (by the holder of the lock), or paused by hand
                    # since the sweep looked: nothing of this sweep's to do.
                    return None
                stamp = self._stamp()
                self._begin_resume(ctx, stamp)
                return self._resume(ctx, stamp, fresh=not (was and was.resuming))
        except MoveBusy:
            return None

    def _begin_resume(self, ctx: str, stamp: str) -> None:
        self.states.store.begin_resume(ctx, stamp)
        # Announced to the other processes; this one's consumer must know at once.
        self.states.cache.invalidate(ctx)

    def _resume(self, ctx: str, stamp: str, *, fresh: bool) -> int:
        """The resume stamped *stamp*, under the move lock. While the tenant is still
        paused, its held tasks are released (they run: they were held before) and its
        new ones are held behind them; pass after pass (at most :data:`PAUSED_PASSES`)
        until one finds none; then it is unpaused, and what was held in between (by
        workers that had not heard yet) released. Only the first pass of a *fresh*
        resume may put its tasks before what is queued (see :mod:`.redis_release`):
        any later one goes behind the tasks released before it."""
        released = moved = self._release_moving(ctx, behind=not fresh)
        for _ in range(PAUSED_PASSES - 1):
            if not moved:
                break
            moved = self._release_moving(ctx, behind=True)
            released += moved
        store = self.states.store
        unpaused = store.unpause_resuming(ctx, stamp, at=self._clock())
        self.states.cache.invalidate(ctx)
        if not unpaused:
            logger.info("tenant-gate: resume of %s overtaken by a pause or another resume", ctx)
            return released
        released += self._release_moving(ctx, behind=True)
        store.end_resume(ctx, stamp)
        self.states.cache.invalidate(ctx)
        logger.info("tenant-gate: resumed %s, %d held task(s) released", ctx, released)
        signals.tenant_resumed.send(sender=ctx, context_id=ctx, released=released)
        return released

    def release(self, context_id: str) -> int:
        """Move the tenant's held tasks back to their queues (without unpausing)."""
        ctx = validate_tenant_id(context_id, self._pattern)
        with self._moving(ctx, self.config.lock_timeout):
            moved = self._release_moving(ctx, behind=False)
        if moved:
            logger.info("tenant-gate: released %d held task(s) of %s", moved, ctx)
        return moved

    def _release_moving(self, ctx: str, *, behind: bool) -> int:
        """Release the tenant's held tasks; the caller holds the move lock."""
        queue = self.queue_for(ctx)
        # Only when someone listens: naming every released task costs a little time.
        listening = self.hooks or signals.task_released.receivers
        told = functools.partial(self._released, ctx) if listening else None
        marker = uuid.uuid4().hex
        moved = self.held_queues.release(queue, marker=marker, on_moved=told, behind=behind)
        # Kept in the held set for a while: a released message that the broker
        # requeues (a worker restarted or killed before acking it) goes back to the
        # tenant queue, and the sweep must find it there.
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

        with self._moving(ctx, self.config.lock_timeout):
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

    def _stamp(self) -> str:
        """A new resume's stamp: the time, made unique (and never 0) by 6 random digits."""
        return f"{self._clock():.6f}{secrets.randbelow(900_000) + 100_000}"

    def _moving(self, ctx: str, wait: float) -> MoveLock:
        return MoveLock(self.states.store, ctx, lease=self.config.lock_lease, wait=wait)
