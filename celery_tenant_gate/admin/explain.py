"""A tenant's state and the gate's verdict, in words: shared by the service (``why``
is part of its results) and the renderer."""

from __future__ import annotations

from celery_tenant_gate.model.record import TenantRecord
from celery_tenant_gate.model.verdicts import Verdict, VerdictPolicy

__all__ = ["state_name", "why"]


def state_name(record: TenantRecord | None) -> str | None:
    """The State API's name of the tenant's last known state, or the raw value of one
    not recognised; ``None`` when no state was ever learnt."""
    if record is None or record.state is None:
        return None
    state = record.state
    if state.state.api_name == "Unrecognised" and state.raw_state:
        return state.raw_state  # what the State API said, not our word for it
    return state.state.api_name


def why(record: TenantRecord | None, policy: VerdictPolicy, now: float) -> str:
    """Why *policy* decides what it decides for *record* at *now*, in a few words."""
    if record is not None and record.deleted:
        return "the tenant is taken as deleted: its tasks are dropped"
    failure = f"failure policy: {policy.failure_verdict.value}"
    if record is None or record.state is None:
        error = f" ({record.error})" if record is not None and record.error else ""
        because = f"no state known{error}; {failure}"
    elif now > record.fresh_until + policy.grace_period:
        because = f"the last state known is too old; {failure}"
    else:
        verdict = policy.for_state(record.state)
        does = "runs" if verdict is Verdict.RUN else f"{verdict.value}s"
        because = f"state {state_name(record)} {does}"
    if record is not None and record.paused:
        joint = ", but" if because.endswith("runs") else ";"
        by, reason = record.paused_by or "?", record.pause_reason or "-"
        because += f"{joint} paused by {by}: {reason}"
    return because
