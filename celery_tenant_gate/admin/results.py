"""What each subcommand of ``celery tenant-gate`` found or did, as data.

:class:`~celery_tenant_gate.admin.service.TenantAdmin` returns these;
:mod:`celery_tenant_gate.admin.render` turns them into what ``--json`` prints and
what a person reads, and any other UI can render them its own way. Times are Unix
timestamps (seconds, UTC); ``now`` is when the result was read, what ages and
durations are counted from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from celery_tenant_gate.gate.controls import TenantStatus
from celery_tenant_gate.model.held import HeldMessage
from celery_tenant_gate.model.record import TenantRecord
from celery_tenant_gate.model.verdicts import Verdict

from .errors import UnknownTenant, unknown_tenants

__all__ = [
    "CheckResult",
    "HeldResult",
    "PauseResult",
    "PausedResult",
    "PurgeResult",
    "Result",
    "ResumeResult",
    "StatusResult",
]


@dataclass(frozen=True)
class StatusResult:
    """``status``: tenants as the workers share them (the State API is not asked)."""

    #: The tenants shown: those asked for that are known, in the order asked; else
    #: those paused or holding tasks (or, with *every*, all), sorted by id.
    tenants: tuple[TenantStatus, ...]
    now: float
    #: The tenants asked for (valid ids, without repeats); empty: none was named.
    asked: tuple[str, ...] = ()
    #: Every tenant the store has a record of was asked for (``--all``).
    every: bool = False
    #: The tenants asked for that the store does not know (left out of *tenants*).
    unknown: tuple[str, ...] = ()

    @property
    def error(self) -> UnknownTenant | None:
        """The failure to report once the known tenants are shown, if some were unknown."""
        return unknown_tenants(self.unknown) if self.unknown else None


@dataclass(frozen=True)
class PausedResult:
    """``paused``: the paused tenants, sorted by id."""

    tenants: tuple[TenantStatus, ...]
    now: float


@dataclass(frozen=True)
class PauseResult:
    """``pause``: a tenant paused by hand."""

    context_id: str
    #: The reason given.
    reason: str
    #: False: it was paused already (the reason is updated).
    changed: bool
    #: False: the store had no record of it before (a typo?).
    known: bool
    #: The pause as stored now.
    pause_reason: str
    paused_by: str


@dataclass(frozen=True)
class ResumeResult:
    """``resume``: a tenant's pause ended and its held tasks released."""

    context_id: str
    was_paused: bool
    #: How many held tasks went back to their queues, oldest first.
    released: int
    #: The verdict after the resume (the state may still say hold).
    verdict: Verdict
    #: Why the gate decides *verdict*, in a few words.
    why: str


@dataclass(frozen=True)
class HeldResult:
    """``held``: the oldest held tasks of a tenant."""

    context_id: str
    #: The tenant's queue, where its held tasks wait.
    queue: str
    #: How many tasks are held in all.
    total: int
    #: The oldest ones, oldest first (at most the limit asked for).
    messages: tuple[HeldMessage, ...]
    now: float


@dataclass(frozen=True)
class PurgeResult:
    """``purge``: a tenant's held tasks dropped into its dead-letter list."""

    context_id: str
    dropped: int
    #: All tasks ever dropped for the tenant and kept.
    dropped_total: int
    #: The Redis key of its dead-letter list.
    dead_letter_key: str


@dataclass(frozen=True)
class CheckResult:
    """``check``: the State API's answer now (stored for every worker) and the verdict."""

    context_id: str
    #: The tenant's record as stored after the answer.
    record: TenantRecord | None
    verdict: Verdict
    #: Why the gate decides *verdict*, in a few words.
    why: str
    now: float


#: Any subcommand's result.
Result: TypeAlias = (
    StatusResult
    | PausedResult
    | PauseResult
    | ResumeResult
    | HeldResult
    | PurgeResult
    | CheckResult
)
