"""What the shared store keeps about one tenant, and its flat (Redis hash) form."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from .states import State, TenantState, parse_timestamp


class Source(str, enum.Enum):
    """Where a state was learnt."""

    PULL = "pull"  #: asked from the State API
    PUSH = "push"  #: told by a state-change notification
    MANUAL = "manual"  #: set by hand (API, CLI)


@dataclass(frozen=True)
class TenantRecord:
    """Everything every worker shares about a tenant.

    Times are Unix timestamps (seconds, UTC) so that all machines compare them.
    """

    context_id: str
    #: The last state learnt, or ``None`` if none was ever learnt.
    state: TenantState | None = None
    source: Source = Source.PULL
    #: When :attr:`state` was learnt.
    learnt_at: float = 0.0
    #: The time the information was observed; a write older than the stored one is
    #: refused, so that a slow pull cannot undo a newer push.
    observed_at: float = 0.0
    #: Until when :attr:`state` is current (its ``ValidUntil``, clamped).
    fresh_until: float = 0.0
    #: When to ask the State API again (after a failure: sooner than fresh_until).
    check_after: float = 0.0
    #: The last failure to learn the state, empty when the last attempt worked.
    error: str = ""
    error_at: float = 0.0
    paused: bool = False
    pause_reason: str = ""
    paused_at: float = 0.0
    #: Who paused it: ``manual`` (only a resume by hand ends it), ``gate`` (its state
    #: said hold) or ``webhook``; the last two end when the tenant runs again.
    paused_by: str = ""
    #: Paused by a notification or a 429: not resumed by itself before this time (an
    #: Upgrade is announced before the State API shows it; a 429 says Retry-After).
    resume_not_before: float = 0.0
    #: A Delete notification came: drop the tenant's work after this time even if the
    #: State API has not confirmed it by then (0: no such notification).
    delete_after: float = 0.0
    #: The tenant is taken as deleted: its tasks are dropped.
    deleted: bool = False
    #: When the newest notification applied was issued (its token's ``iat``).
    notified_at: float = 0.0
    #: A resume is under way, and this is its stamp (0: none): while it lasts, tasks
    #: released from the tenant queue run and new ones are held behind them. It stays
    #: until the resume is finished, so that any worker's sweep finishes an
    #: interrupted one.
    resuming: float = 0.0
    #: Bumped by every write; lets caches tell answers apart.
    version: int = 0

    def is_due(self, now: float) -> bool:
        """True when the State API should be asked again."""
        return now >= self.check_after

    @property
    def resumes_by_itself(self) -> bool:
        """True when the pause ends as soon as the tenant's state says it runs."""
        return self.paused and self.paused_by != "manual"


def state_fields(state: TenantState) -> dict[str, str]:
    """The hash fields that carry a :class:`TenantState`."""
    return {
        "state": str(int(state.state)),
        "raw_state": state.raw_state,
        "is_running": "1" if state.is_running else "0",
        "valid_until": state.valid_until.isoformat() if state.valid_until else "",
        "endpoint": state.endpoint,
        "api": state.api,
    }


def record_from_fields(context_id: str, fields: Mapping[str, str]) -> TenantRecord | None:
    """Read a record back from its hash fields; ``None`` for an empty hash.

    Tolerant by design: a field that is missing or unreadable takes its default,
    so that a hand-edited or older record can never crash a worker.
    """
    if not fields:
        return None

    def num(name: str) -> float:
        try:
            return float(fields.get(name) or 0)
        except ValueError:
            return 0.0

    state: TenantState | None = None
    if fields.get("state", "") != "":
        valid_until = None
        if fields.get("valid_until"):
            try:
                valid_until = parse_timestamp(fields["valid_until"])
            except ValueError:
                valid_until = None
        state = TenantState(
            context_id=context_id,
            state=State.parse(fields.get("state")),
            raw_state=fields.get("raw_state", ""),
            is_running=fields.get("is_running") == "1",
            valid_until=valid_until,
            endpoint=fields.get("endpoint", ""),
            api=fields.get("api", ""),
        )
    try:
        source = Source(fields.get("source", "pull"))
    except ValueError:
        source = Source.PULL
    return TenantRecord(
        context_id=context_id,
        state=state,
        source=source,
        learnt_at=num("learnt_at"),
        observed_at=num("observed_at"),
        fresh_until=num("fresh_until"),
        check_after=num("check_after"),
        error=fields.get("error", ""),
        error_at=num("error_at"),
        paused=fields.get("paused") == "1",
        pause_reason=fields.get("pause_reason", ""),
        paused_at=num("paused_at"),
        paused_by=fields.get("paused_by", ""),
        resume_not_before=num("resume_not_before"),
        delete_after=num("delete_after"),
        deleted=fields.get("deleted") == "1",
        notified_at=num("notified_at"),
        resuming=num("resuming"),
        version=int(num("version")),
    )
