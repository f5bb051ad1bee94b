"""The sweep: ends the pauses that end by themselves, finishes resumes that were
interrupted, drops the held work of deleted tenants, releases stragglers (tasks held
just as their tenant resumed), and stops watching tenant queues that stayed empty.

What to do about a tenant is decided by :func:`plan`, a pure function: its record and
the time in, a :class:`SweepAction` out. :class:`Sweep` reads what the plan needs,
asks it, and does what it says.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from celery_tenant_gate.config.settings import GateConfig
from celery_tenant_gate.model.held import HeldQueues
from celery_tenant_gate.model.record import TenantRecord
from celery_tenant_gate.model.verdicts import Verdict, VerdictPolicy

from .controls import TenantControls
from .lookup import TenantStates
from .report import why

logger = logging.getLogger(__name__)


class Act(enum.Enum):
    """What the sweep does about one tenant."""

    NOTHING = "nothing"
    #: Ask the State API now, then plan again with the answer (``refreshed=True``).
    REFRESH = "refresh"
    #: Count the tenant's held tasks, then plan again with the count (``held=``).
    COUNT_HELD = "count held"
    #: The tenant is deleted: drop its held tasks; once none are left, stop sweeping it.
    PURGE_DELETED = "purge deleted"
    #: A Delete notification's wait for the State API is over, unconfirmed: nothing is
    #: dropped; the wait is ended (and logged) and the tenant follows its state.
    DELETE_UNCONFIRMED = "delete unconfirmed"
    #: Its pause ends: its state runs again. Or a resume is under way (its record says
    #: ``resuming``): finished, unless another worker is moving its tasks.
    RESUME = "resume"
    #: It runs and is not paused, yet tasks are held: release them.
    RELEASE = "release"
    #: Paused (or a Delete was announced) and its state says drop: take it as deleted.
    MARK_DELETED = "mark deleted"
    #: Not paused and its state says drop: drop its held tasks.
    PURGE = "purge"


@dataclass(frozen=True)
class SweepAction:
    """What :func:`plan` says to do about a tenant."""

    act: Act
    #: For the purges, the reason each dead letter gives; for the deletions, why the
    #: tenant is taken as deleted.
    reason: str = ""


_NOTHING = SweepAction(Act.NOTHING)
_REFRESH = SweepAction(Act.REFRESH)
_COUNT_HELD = SweepAction(Act.COUNT_HELD)
_RESUME = SweepAction(Act.RESUME)
_RELEASE = SweepAction(Act.RELEASE)


def plan(
    record: TenantRecord | None,
    now: float,
    policy: VerdictPolicy,
    *,
    refreshed: bool = False,
    held: int | None = None,
) -> SweepAction:
    """What the sweep does about the tenant of *record* at time *now*. No I/O.

    Two answers ask for more, and to be asked again with it: :attr:`Act.REFRESH`
    (pass the State API's answer and ``refreshed=True``: it is then followed as it is)
    and :attr:`Act.COUNT_HELD` (pass ``held``, how many tasks the tenant has held).
    """
    if record is None:
        return _NOTHING
    if not refreshed:
        first = _before_state(record, now)
        if first is not None:
            return first
        # A notification's minimum pause, or a 429's Retry-After (see .backoff).
        waiting = record.resumes_by_itself and now < record.resume_not_before
        if (record.paused and not record.resumes_by_itself) or waiting:
            return _NOTHING
        if record.paused_by == "webhook" and record.learnt_at < record.paused_at:
            # Only an answer given after the notification says it is over.
            return _REFRESH
    return _follow_state(record, now, policy, held)


def _before_state(record: TenantRecord, now: float) -> SweepAction | None:
    """What is done whatever the tenant's state: a deletion, or a resume under way
    (asked for, by hand too, and not finished: its releaser may have died)."""
    if record.deleted:
        return SweepAction(Act.PURGE_DELETED, "tenant deleted")
    if record.delete_after and now >= record.delete_after:
        return SweepAction(Act.DELETE_UNCONFIRMED, "Delete")
    return _RESUME if record.resuming else None


def _follow_state(
    record: TenantRecord, now: float, policy: VerdictPolicy, held: int | None
) -> SweepAction:
    """Resume, release or drop as the tenant's state (not its pause) says."""
    verdict = policy.decide(replace(record, paused=False), now)
    if verdict is Verdict.RUN:
        if record.paused:
            return _RESUME
        if held is None:
            return _COUNT_HELD
        return _RELEASE if held else _NOTHING
    if verdict is Verdict.DROP:
        state = why(replace(record, paused=False))  # the state that drops it, not a pause
        if record.paused or record.delete_after:
            return SweepAction(Act.MARK_DELETED, state)
        return SweepAction(Act.PURGE, f"tenant dropped: {state}")
    return _NOTHING


def idle_tenants(last_held: Mapping[str, float], now: float, forget_after: float) -> list[str]:
    """The tenants whose last hold (or release) is more than *forget_after* seconds
    before *now*: forgotten by the sweep once their queue is empty. No I/O."""
    cutoff = now - forget_after
    return [ctx for ctx, last in last_held.items() if last < cutoff]


class Sweep:
    """Runs the sweep: reads each paused or holding tenant, plans, and acts."""

    def __init__(
        self,
        config: GateConfig,
        states: TenantStates,
        held: HeldQueues,
        controls: TenantControls,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.states = states
        self.held_queues = held
        self.controls = controls
        self._clock = clock

    def run(self) -> dict[str, str]:
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

    def _sweep_one(self, ctx: str) -> str:
        record = self.states.record(ctx)  # asks the State API when its answer is due
        now = self._clock()
        policy = self.states.policy
        action = plan(record, now, policy)
        refreshed = action.act is Act.REFRESH
        if refreshed:
            record = self.states.refresh(ctx) or record
            action = plan(record, now, policy, refreshed=True)
        if action.act is Act.COUNT_HELD:
            held = self.held_queues.count(self.controls.queue_for(ctx))
            action = plan(record, now, policy, refreshed=refreshed, held=held)
        return self._perform(ctx, action)

    def _perform(self, ctx: str, action: SweepAction) -> str:
        """Do *action* for *ctx*; what was done, in words ("" for nothing)."""
        controls, act, reason = self.controls, action.act, action.reason
        what = ""
        if act is Act.PURGE_DELETED:
            what = _say("dropped", controls.purge(ctx, reason=reason))
            if self.held_queues.count(controls.queue_for(ctx)) == 0:
                # Its tasks are dropped as they come from now on: nothing is left to
                # sweep, so sweeps do not grow with the tenants ever deleted.
                self.states.store.retire(ctx)
        elif act is Act.DELETE_UNCONFIRMED:
            # Never dropped on the word of a notification (its body is not signed, and
            # a captured token could be re-sent as a Delete): the State API decides.
            self.states.store.set_fields(ctx, {"delete_after": "0"})
            logger.warning(
                "tenant-gate: the State API has not confirmed the Delete notification for "
                "%s; nothing dropped, the tenant follows its state",
                ctx,
            )
            what = "Delete not confirmed by the State API: nothing dropped"
        elif act is Act.RESUME:
            released = controls.finish_resume(ctx)
            what = "" if released is None else f"resumed, {released} released"
        elif act is Act.RELEASE:
            what = _say("released stragglers:", controls.release(ctx))
        elif act is Act.MARK_DELETED:
            what = f"deleted, dropped {controls.mark_deleted(ctx, reason)}"
        elif act is Act.PURGE:
            what = _say("dropped", controls.purge(ctx, reason=reason))
        return what

    def _forget_idle(self, last_held: Mapping[str, float]) -> None:
        """Stop sweeping tenant queues that stayed empty past the forget time."""
        forget_after = self.config.held_forget_after
        idle = {
            self.controls.queue_for(ctx): ctx
            for ctx in idle_tenants(last_held, self._clock(), forget_after)
        }
        if not idle:
            return
        # One connection for all of them (on RabbitMQ a connection a tenant would cost
        # a sweep more than its work).
        for queue, count in self.held_queues.counts(list(idle)).items():
            if count == 0:
                self.states.store.unmark_held(idle[queue])


def _say(what: str, count: int) -> str:
    return f"{what} {count}" if count else ""
