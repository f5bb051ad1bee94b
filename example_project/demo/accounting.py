"""What happened to every task the demo published, from what the task bodies wrote in
the activity log and what the gate kept in its dead-letter lists.

Pure bookkeeping, no I/O: :func:`account` takes the facts and returns the summary.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Published:
    """One task the demo sent: its id, tenant (None: a task for no tenant) and its
    number in the order of that tenant's tasks."""

    id: str
    task: str
    ctx: str | None
    seq: int
    at: float


@dataclass(frozen=True)
class Pause:
    """A tenant was paused from *start* to *end* (None: until the end of the demo),
    as the shared store recorded it."""

    ctx: str
    start: float
    end: float | None
    why: str


@dataclass(frozen=True)
class Move:
    """A tenant's API moved to *new_host*; the demo saw the gate apply it at *applied*."""

    ctx: str
    old_host: str
    new_host: str
    applied: float


@dataclass
class Summary:
    published: int = 0
    run: int = 0
    held: int = 0
    released: int = 0
    dropped: int = 0
    lost: int = 0
    run_while_paused: int = 0
    #: Released tasks that ran before a released task published earlier (per tenant).
    released_out_of_order: int = 0
    #: Bodies that started after a Move was applied and still called the old server.
    stale_endpoint: int = 0
    #: Attempts that failed (e.g. 421 from a server the tenant left) and were retried.
    failed_attempts: int = 0
    #: Tasks whose body completed more than once (at-least-once delivery).
    duplicates: int = 0
    #: Tasks still waiting in a tenant queue at the end.
    held_at_end: int = 0
    tenants: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (
            self.lost
            or self.run_while_paused
            or self.released_out_of_order
            or self.stale_endpoint
            or self.held_at_end
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def account(
    published: list[Published],
    runs: list[dict[str, Any]],
    *,
    dropped: dict[str, list[dict[str, Any]]] | None = None,
    pauses: list[Pause] | None = None,
    moves: list[Move] | None = None,
    held_at_end: int = 0,
) -> Summary:
    """The summary of a run.

    *runs* are activity-log entries (``id``, ``ctx``, ``started``, ``held``, ``api``,
    and ``error`` for an attempt that failed); *dropped* maps a tenant to the headers of
    its dead letters.
    """
    dropped, pauses, moves = dropped or {}, pauses or [], moves or []
    mine = {task.id: task for task in published}
    done: dict[str, list[dict[str, Any]]] = defaultdict(list)
    summary = Summary(published=len(published), held_at_end=held_at_end)
    for entry in runs:
        if entry.get("id") not in mine:
            continue
        if entry.get("error"):
            summary.failed_attempts += 1
        else:
            done[entry["id"]].append(entry)
    dropped_ids = {
        str(headers.get("id")): headers
        for letters in dropped.values()
        for headers in letters
        if headers.get("id") in mine
    }
    summary.run = len(done)
    summary.duplicates = sum(len(entries) - 1 for entries in done.values())
    summary.dropped = len(dropped_ids)
    summary.released = sum(1 for entries in done.values() if entries[0].get("held"))
    summary.held = summary.released + sum(
        1 for headers in dropped_ids.values() if int(headers.get("tenant_gate_held") or 0)
    )
    summary.lost = sum(1 for task_id in mine if task_id not in done and task_id not in dropped_ids)
    summary.run_while_paused = sum(
        1 for entry in runs if entry.get("id") in mine and _during_pause(entry, pauses)
    )
    summary.released_out_of_order = _out_of_order(mine, done)
    summary.stale_endpoint = sum(
        1
        for entry in runs
        for move in moves
        if entry.get("ctx") == move.ctx
        and entry["started"] > move.applied
        and urlsplit(entry.get("api", "")).hostname != move.new_host
    )
    for ctx in sorted({task.ctx for task in published if task.ctx}):
        ids = [task.id for task in published if task.ctx == ctx]
        summary.tenants[ctx] = {
            "published": len(ids),
            "run": sum(1 for i in ids if i in done),
            "released": sum(1 for i in ids if i in done and done[i][0].get("held")),
            "dropped": sum(1 for i in ids if i in dropped_ids),
        }
    return summary


#: Seconds a stored pause takes to reach every worker's cache (the README: "within
#: milliseconds"; tested under 50 ms). A body that passed its last check just before
#: the pause arrived may start inside this window: that is not a body run while paused.
PROPAGATION = 0.05


def _during_pause(entry: dict[str, Any], pauses: list[Pause]) -> bool:
    if entry.get("held"):
        # Released: a resume releases the held tasks while the tenant is still paused
        # (its new tasks wait behind them), so these start before the unpause.
        return False
    started = float(entry["started"])
    return any(
        pause.ctx == entry.get("ctx")
        and started > pause.start + PROPAGATION
        and (pause.end is None or started < pause.end)
        for pause in pauses
    )


def _out_of_order(mine: dict[str, Published], done: dict[str, list[dict[str, Any]]]) -> int:
    """Per tenant, released tasks taken in the order their bodies started: how many
    started after one that was published later."""
    released: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for task_id, entries in done.items():
        first = entries[0]
        task = mine[task_id]
        if first.get("held") and task.ctx:
            released[task.ctx].append((float(first["started"]), task.seq))
    wrong = 0
    for runs in released.values():
        highest = -1
        for _started, seq in sorted(runs):
            if seq < highest:
                wrong += 1
            highest = max(highest, seq)
    return wrong
