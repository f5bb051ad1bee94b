"""What to do with a tenant's task: run it, hold it, or drop it. Pure policy, no I/O."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from .record import TenantRecord
from .states import State, TenantState


class Verdict(str, enum.Enum):
    RUN = "run"  #: the task's body runs
    HOLD = "hold"  #: the task waits in its tenant's queue
    DROP = "drop"  #: the task is recorded as dropped and never runs


#: What SuperOffice asks vendors to do in each state (see SUPEROFFICE.md).
#: Override per state with the ``tenant_gate_verdicts`` setting.
DEFAULT_VERDICTS: Mapping[State, Verdict] = MappingProxyType(
    {
        State.UNRECOGNISED: Verdict.HOLD,
        State.UNKNOWN: Verdict.HOLD,
        State.PROVISIONING: Verdict.HOLD,
        State.RUNNING: Verdict.RUN,
        State.DELETED: Verdict.DROP,
        State.SUSPENDED: Verdict.HOLD,
        State.ONLINE_MAINTENANCE: Verdict.RUN,
        State.OFFLINE_MAINTENANCE: Verdict.HOLD,
        State.PROVISIONING_FAILED: Verdict.HOLD,
        State.DELETING: Verdict.DROP,
        State.DELETE_FAILED: Verdict.DROP,
        State.MIGRATION_PENDING: Verdict.HOLD,
    }
)


@dataclass(frozen=True)
class VerdictPolicy:
    """Turns what is known about a tenant into a :class:`Verdict`."""

    verdicts: Mapping[State, Verdict] = field(default_factory=lambda: DEFAULT_VERDICTS)
    #: The verdict when the state is unknown because the State API failed and the
    #: last known state is older than the grace period (or there is none).
    failure_verdict: Verdict = Verdict.HOLD
    #: Seconds after a state stops being fresh during which it is still used while
    #: the State API fails.
    grace_period: float = 300.0

    def for_state(self, state: TenantState) -> Verdict:
        """The verdict for a state. A state whose ``IsRunning`` is false never runs."""
        verdict = self.verdicts.get(state.state, Verdict.HOLD)
        if verdict is Verdict.RUN and not state.is_running:
            return Verdict.HOLD
        return verdict

    def decide(self, record: TenantRecord | None, now: float, *, released: bool = False) -> Verdict:
        """The verdict for a tenant, from its record, at time *now* (Unix seconds).

        A pause holds every task, except, while the tenant is being resumed
        (:attr:`~.record.TenantRecord.resuming`), a *released* one (a task that was
        held before): the held tasks run first, the new ones wait behind them.
        """
        if record is not None and record.deleted:
            return Verdict.DROP
        if record is None or record.state is None:
            verdict = self.failure_verdict
        elif now > record.fresh_until + self.grace_period:
            # Whatever kept it from being refreshed, a state this old is not evidence.
            verdict = self.failure_verdict
        else:
            verdict = self.for_state(record.state)
        if record is None or not record.paused or verdict is not Verdict.RUN:
            return verdict
        return Verdict.RUN if released and record.resuming else Verdict.HOLD
