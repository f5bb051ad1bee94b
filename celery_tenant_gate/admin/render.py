"""The results of ``celery tenant-gate``, rendered: :func:`document` gives what
``--json`` prints (keys documented in the README, stable), :func:`text` what a person
reads. Pure: no I/O, no clock (ages are counted from each result's ``now``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery_tenant_gate.gate.controls import TenantStatus
from celery_tenant_gate.model.held import HeldMessage
from celery_tenant_gate.model.record import TenantRecord
from celery_tenant_gate.model.verdicts import Verdict

from .explain import state_name
from .formatting import ago, duration, table
from .results import (
    CheckResult,
    HeldResult,
    PausedResult,
    PauseResult,
    PurgeResult,
    Result,
    ResumeResult,
    StatusResult,
)

__all__ = ["document", "tenant_json", "text"]


def document(result: Result) -> dict[str, Any]:
    """What ``--json`` prints for *result*."""
    match result:
        case StatusResult() | PausedResult():
            return {"tenants": [tenant_json(status) for status in result.tenants]}
        case PauseResult():
            return {
                "context_id": result.context_id,
                "paused": True,
                "changed": result.changed,
                "known": result.known,
                "pause_reason": result.pause_reason,
                "paused_by": result.paused_by,
            }
        case ResumeResult():
            return {
                "context_id": result.context_id,
                "was_paused": result.was_paused,
                "released": result.released,
                "verdict": result.verdict.value,
            }
        case HeldResult():
            return {
                "context_id": result.context_id,
                "queue": result.queue,
                "total": result.total,
                "messages": [_held_json(message, result.now) for message in result.messages],
            }
        case PurgeResult():
            return {
                "context_id": result.context_id,
                "dropped": result.dropped,
                "dropped_total": result.dropped_total,
                "dead_letter_key": result.dead_letter_key,
            }
        case CheckResult():
            return _check_json(result)


def text(result: Result) -> str:
    """What a person reads for *result* (may be empty)."""
    match result:
        case StatusResult():
            said = _status_text(result)
        case PausedResult():
            said = _paused_text(result)
        case PauseResult():
            said = _pause_text(result)
        case ResumeResult():
            said = _resume_text(result)
        case HeldResult():
            said = _held_text(result)
        case PurgeResult():
            said = _purge_text(result)
        case CheckResult():
            said = _check_text(result)
    return said


# -- JSON ---------------------------------------------------------------------------------


def tenant_json(status: TenantStatus) -> dict[str, Any]:
    """A tenant as ``status --json`` and ``paused --json`` print it."""
    record = status.record
    state = record.state if record is not None else None
    paused = record is not None and record.paused
    return {
        "context_id": status.context_id,
        "verdict": status.verdict.value,
        "state": state_name(record),
        "is_running": state.is_running if state is not None else None,
        "paused": paused,
        "pause_reason": record.pause_reason if record is not None and paused else "",
        "paused_by": record.paused_by if record is not None and paused else "",
        "paused_at": _time(record.paused_at) if record is not None and paused else None,
        "deleted": record is not None and record.deleted,
        "held": status.held,
        "dropped": status.dropped,
        "queue": status.queue,
        "endpoint": state.endpoint if state is not None else "",
        "api": state.api if state is not None else "",
        "source": record.source.value if record is not None and state is not None else None,
        "learnt_at": _time(record.learnt_at) if record is not None else None,
        "fresh_until": _time(record.fresh_until) if record is not None else None,
        "error": record.error if record is not None else "",
        "error_at": _time(record.error_at) if record is not None and record.error else None,
        "last_change": _last_change(record),
    }


def _held_json(message: HeldMessage, now: float) -> dict[str, Any]:
    held_at = message.held_at
    return {
        "task_id": message.task_id,
        "task_name": message.task_name,
        "held_at": held_at,
        "age": round(now - held_at, 3) if held_at else None,
        "holds": message.holds,
        "eta": message.eta,
    }


def _check_json(result: CheckResult) -> dict[str, Any]:
    record = result.record
    state = record.state if record is not None else None
    valid_until = state.valid_until if state is not None else None
    return {
        "context_id": result.context_id,
        "state": state_name(record),
        "raw_state": state.raw_state if state is not None else "",
        "is_running": state.is_running if state is not None else None,
        "valid_until": valid_until.timestamp() if valid_until else None,
        "endpoint": state.endpoint if state is not None else "",
        "api": state.api if state is not None else "",
        "paused": record is not None and record.paused,
        "verdict": result.verdict.value,
        "why": result.why,
    }


# -- text ---------------------------------------------------------------------------------


def _status_text(result: StatusResult) -> str:
    if result.tenants:
        return _status_table(result.tenants, result.now)
    if result.asked:
        return ""  # all unknown: the error says so
    return "No tenant has a record." if result.every else "No paused tenant, no held task."


def _status_table(statuses: Sequence[TenantStatus], now: float) -> str:
    rows = []
    notes = []
    for status in statuses:
        record = status.record
        paused, reason = "no", ""
        if record is not None and record.paused:
            paused = f"by {record.paused_by or '?'}, {ago(record.paused_at, now)}"
            reason = record.pause_reason
        if record is not None and record.deleted:
            paused = "deleted" if paused == "no" else f"deleted; {paused}"
        state = record.state if record is not None else None
        rows.append(
            [
                status.context_id,
                state_name(record) or "(none)",
                status.verdict.value,
                paused,
                status.held,
                status.dropped,
                state.endpoint if state is not None and state.endpoint else "-",
                ago(_last_change(record), now),
                reason,
            ]
        )
        if record is not None and record.error:
            notes.append(
                f"{status.context_id}: the last State API call failed "
                f"{ago(record.error_at, now)}: {record.error}"
            )
    headers = ["TENANT", "STATE", "VERDICT", "PAUSED", "HELD", "DROPPED", "ENDPOINT"]
    return "\n".join([table([*headers, "LAST CHANGE", "REASON"], rows), *notes])


def _paused_text(result: PausedResult) -> str:
    if not result.tenants:
        return "No tenant is paused."
    rows = []
    for status in result.tenants:
        record = status.record
        by, since, reason = "?", "-", ""
        if record is not None:
            by, reason = record.paused_by or "?", record.pause_reason
            since = ago(record.paused_at, result.now)
        rows.append([status.context_id, by, since, status.held, reason])
    return table(["TENANT", "BY", "SINCE", "HELD", "REASON"], rows)


def _pause_text(result: PauseResult) -> str:
    ctx = result.context_id
    if result.changed:
        said = f"Paused {ctx} ({result.reason}): its tasks are held until resume."
    else:
        said = f"{ctx} was paused already; reason now: {result.pause_reason}"
    if not result.known:
        said += f"\nNote: {ctx} had no record yet (a typo?)."
    return said


def _resume_text(result: ResumeResult) -> str:
    ctx = result.context_id
    first = f"Resumed {ctx}" if result.was_paused else f"{ctx} was not paused"
    said = f"{first}: {result.released} held task(s) released, oldest first."
    if result.verdict is not Verdict.RUN:
        said += f"\nIts verdict is still {result.verdict.value} ({result.why})."
    return said


def _purge_text(result: PurgeResult) -> str:
    if not result.dropped:
        return f"{result.context_id} has no held task: nothing dropped."
    return (
        f"Dropped {result.dropped} held task(s) of {result.context_id} "
        f"(kept in Redis: {result.dead_letter_key})."
    )


def _held_text(result: HeldResult) -> str:
    ctx, messages, now = result.context_id, result.messages, result.now
    if not messages:
        return f"{ctx} has no held task."
    rows = [
        [
            message.task_id,
            message.task_name,
            duration(now - message.held_at) if message.held_at else "?",
            message.holds,
            message.eta or "-",
        ]
        for message in messages
    ]
    listing = table(["TASK ID", "TASK", "WAITING", "HOLDS", "ETA"], rows)
    return (
        f"{listing}\n{len(messages)} of {result.total} held task(s) of {ctx}, oldest "
        f"first, in queue {result.queue}."
    )


def _check_text(result: CheckResult) -> str:
    answer = _check_json(result)
    record = result.record
    state = record.state if record is not None else None
    valid_until = state.valid_until if state is not None else None
    valid = "-"
    if valid_until is not None:
        until = valid_until.isoformat(timespec="seconds")
        valid = f"{duration(valid_until.timestamp() - result.now)} more (ValidUntil {until})"
    running = "-" if state is None else str(state.is_running).lower()
    rows = [
        ("tenant", result.context_id),
        ("state", f"{answer['state'] or '(none)'} (IsRunning: {running})"),
        ("valid", valid),
        ("endpoint", answer["endpoint"] or "-"),
        ("api", answer["api"] or "-"),
        ("verdict", f"{result.verdict.value}: {result.why}"),
    ]
    return "\n".join(f"{name:<9} {value}" for name, value in rows)


def _last_change(record: TenantRecord | None) -> float | None:
    if record is None:
        return None
    return _time(max(record.learnt_at, record.paused_at, record.error_at))


def _time(value: float) -> float | None:
    return value if value > 0 else None
