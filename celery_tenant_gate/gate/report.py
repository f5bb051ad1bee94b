"""Telling what the gate did with tasks: the signals (one per task), the hooks, the
dead-letter record of dropped work, and the reason given for it all.

Shared by the hot path (:mod:`.screen`) and the tenant controls (:mod:`.controls`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from celery_tenant_gate.io.store.deadletters import DeadLetter, DeadLetters
from celery_tenant_gate.model.held import HeldMessage, TaskRef
from celery_tenant_gate.model.record import TenantRecord

from . import signals
from .hooks import GateHooks

logger = logging.getLogger(__name__)


def tell(hooks: Sequence[GateHooks], name: str, call: Callable[[GateHooks], None]) -> None:
    """*call* each of the *hooks* (its method *name*); one that fails is logged."""
    for each in hooks:
        try:
            call(each)
        except Exception:
            logger.exception("tenant-gate: %s.%s failed", type(each).__name__, name)


def tell_dropped(
    hooks: Sequence[GateHooks], ctx: str, messages: Sequence[HeldMessage], reason: str
) -> None:
    """Send ``task_dropped`` for each of *messages*, and tell the hooks."""
    for message in messages:
        signals.task_dropped.send(
            sender=ctx,
            context_id=ctx,
            task_id=message.task_id,
            task_name=message.task_name,
            reason=reason,
        )
    if hooks:
        tasks = [TaskRef(m.task_id, m.task_name, "") for m in messages]
        tell(hooks, "on_dropped", lambda each: each.on_dropped(ctx, tasks, reason))


def dead_letter(dead: DeadLetters, ctx: str, message: HeldMessage, reason: str, at: float) -> None:
    """Log a dropped task and keep it in the tenant's dead-letter list."""
    logger.warning(
        "tenant-gate: dropped task %s[%s] of %s: %s",
        message.task_name,
        message.task_id,
        ctx,
        reason,
    )
    dead.record(ctx, [letter(message, reason, at)])


def letter(message: HeldMessage, reason: str, at: float) -> DeadLetter:
    """*message* as a dead letter, dropped at *at* for *reason*."""
    return DeadLetter.of(message, reason, at)


def why(record: TenantRecord | None) -> str:
    """Why a tenant's tasks do not run, in words: its pause reason or its state."""
    if record is None or record.state is None:
        return "state unknown" + (f" ({record.error})" if record and record.error else "")
    if record.paused and record.pause_reason:
        return record.pause_reason
    return f"state {record.state.state.api_name}"
