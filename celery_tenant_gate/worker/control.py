"""The control task: what a state-change notification does, on one worker, for all.

Idempotent and safe against duplicates and reordering: the State API stays the
source of truth, and a notification issued before the newest one applied for its
tenant is ignored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from celery_tenant_gate.config.reading import gate_config
from celery_tenant_gate.config.settings import CONTROL_TASK
from celery_tenant_gate.gate import signals
from celery_tenant_gate.gate.gate import Gate
from celery_tenant_gate.model.ids import compile_pattern, validate_tenant_id
from celery_tenant_gate.model.notification import ChangeType
from celery_tenant_gate.model.verdicts import Verdict

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Change:
    gate: Gate
    ctx: str
    name: str
    now: float
    issued: float
    public_endpoint: str
    version_name: str


def apply_notification(
    gate: Gate,
    *,
    change_type: int,
    context_id: str,
    public_endpoint: str = "",
    version_name: str = "",
    file_version: str = "",
    token_iat: float | None = None,
    received_at: float | None = None,
) -> str:
    """Act on one notification; returns what was done, in a few words."""
    ctx = validate_tenant_id(context_id, compile_pattern(gate.config.tenant_id_pattern))
    if isinstance(change_type, bool) or change_type not in set(ChangeType):
        raise ValueError(f"unknown ChangeType {change_type!r}")
    now = time.time()
    change = _Change(
        gate,
        ctx,
        ChangeType(change_type).name,
        now,
        token_iat or received_at or now,
        public_endpoint,
        version_name,
    )
    if not gate.states.store.note_notification(ctx, change.issued):
        logger.info(
            "tenant-gate: %s notification for %s is older than one applied; ignored",
            change.name,
            ctx,
        )
        return "ignored: older than the last notification applied"
    outcome = _HANDLERS[change_type](change)
    gate.states.cache.invalidate(ctx)
    return outcome


def _pause(change: _Change) -> str:
    gate = change.gate
    reason = f"{change.name} notification {change.version_name}".strip()
    gate.pause(change.ctx, reason=reason, by="webhook")
    resume_not_before = change.now + gate.config.webhook_min_pause
    gate.states.store.set_fields(change.ctx, {"resume_not_before": repr(resume_not_before)})
    return "paused"


def _resume(change: _Change) -> str:
    gate, ctx = change.gate, change.ctx
    record = gate.states.refresh(ctx)  # confirm with the source of truth
    if record is not None and record.resumes_by_itself:
        verdict = gate.states.policy.decide(replace(record, paused=False), change.now)
        if verdict is Verdict.RUN:
            return f"resumed, {gate.resume(ctx)} released"
    # Not running yet: the sweep keeps watching the State API.
    gate.states.store.set_fields(ctx, {"resume_not_before": "0"})
    return "not running yet: watching"


def _delete(change: _Change) -> str:
    gate, ctx = change.gate, change.ctx
    gate.pause(ctx, reason="Delete notification", by="webhook")
    # Dropped when the State API confirms, or after the timeout if it never answers
    # running again (a Delete's tenant may answer 404 rather than Deleted). A tenant
    # it reports running after the minimum pause resumes: the API is the truth.
    config = gate.config
    gate.states.store.set_fields(
        ctx,
        {
            "delete_after": repr(change.now + config.delete_confirm_timeout),
            "resume_not_before": repr(change.now + config.webhook_min_pause),
        },
    )
    record = gate.states.refresh(ctx)
    state = record.state if record is not None else None
    if state is not None and gate.states.policy.for_state(state) is Verdict.DROP:
        return f"deleted, {gate.mark_deleted(ctx, state.state.api_name)} dropped"
    return "paused: waiting for the State API to confirm the deletion"


def _move(change: _Change) -> str:
    """The new server comes from the State API, never from the notification's
    ``PublicEndpoint`` (not signed): asked now; when its ``Endpoint`` is on the host
    the notification names (or it names none), the move is taken as done. When the
    two disagree, the tenant is paused (by ``webhook``) and the sweep resumes it once a
    later answer says it runs, on whatever server that answer names."""
    gate, ctx = change.gate, change.ctx
    record = gate.states.refresh(ctx)
    state = record.state if record is not None else None
    endpoint, api = (state.endpoint, state.api) if state is not None else ("", "")
    hinted = change.public_endpoint.strip().lower()
    if endpoint and (not hinted or _host(endpoint) == hinted):
        signals.tenant_moved.send(sender=ctx, context_id=ctx, endpoint=endpoint, api=api)
        return f"moved to {_host(endpoint)} (the State API agrees)"
    gate.pause(ctx, reason=f"Move notification to {hinted or '?'} not confirmed", by="webhook")
    gate.states.store.set_fields(ctx, {"resume_not_before": repr(change.now)})
    logger.warning(
        "tenant-gate: a Move notification names %s for %s, the State API says %s; "
        "paused until the State API is asked again",
        hinted or "no host",
        ctx,
        _host(endpoint) or "nothing",
    )
    return "move not confirmed by the State API: paused, re-checking"


def _host(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def _backup_restored(change: _Change) -> str:
    record = change.gate.states.refresh(change.ctx)
    state = record.state.state.api_name if record is not None and record.state else ""
    signals.tenant_backup_restored.send(sender=change.ctx, context_id=change.ctx, state=state)
    return "backup restored: state re-checked"


_HANDLERS: dict[int, Callable[[_Change], str]] = {
    ChangeType.Upgrade: _pause,
    ChangeType.BackupRestored: _backup_restored,
    ChangeType.Suspend: _pause,
    ChangeType.Resume: _resume,
    ChangeType.Delete: _delete,
    ChangeType.Move: _move,
}


def apply_manual(gate: Gate, *, action: str, context_id: str, reason: str = "") -> str:
    """A pause or resume by hand, sent through the control queue (see :func:`send`)."""
    if action == "pause":
        changed = gate.pause(context_id, reason=reason or "paused by hand", by="manual")
        return "paused" if changed else "already paused"
    if action == "resume":
        return f"resumed, {gate.resume(context_id)} released"
    raise ValueError(f"unknown control action {action!r}: expected 'pause' or 'resume'")


def send(app: Any, action: str, context_id: str, reason: str = "") -> Any:
    """Ask the worker cluster to pause or resume a tenant, as the webhook would.

    ``send(app, "pause", "Cust12345", reason="data migration")``. Returns the
    ``AsyncResult`` of the control task. Needs only the broker.
    """
    if action not in ("pause", "resume"):
        raise ValueError(f"unknown control action {action!r}: expected 'pause' or 'resume'")
    return app.send_task(
        CONTROL_TASK,
        kwargs={"action": action, "context_id": context_id, "reason": reason},
        queue=gate_config(app).control_queue,
    )


def register(app: Any, gate_of: Any) -> Any:
    """Register the control task on *app* (done by ``install``)."""

    @app.task(  # type: ignore[untyped-decorator]
        name=CONTROL_TASK,
        ignore_result=True,
        acks_late=True,
        shared=False,
    )
    def control(**notification: Any) -> str:
        if "action" in notification:
            outcome = apply_manual(gate_of(app), **notification)
        else:
            outcome = apply_notification(gate_of(app), **notification)
        logger.info("tenant-gate: control %s: %s", notification.get("context_id"), outcome)
        return outcome

    return control
