"""Held messages: what a tenant queue holds, and what every broker's tenant queues can do."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from .carrier import HELD_AT_HEADER, HELD_COUNT_HEADER


class TaskRef(NamedTuple):
    """One task the gate acted on."""

    task_id: str
    task_name: str
    #: Where it is now: the tenant queue (held), the queue it went back to
    #: (released), or ``""`` (dropped).
    queue: str


#: Told which tasks a release moved (id, name, queue they went back to), a batch at a
#: time, once they are back: given only when someone listens, as it costs time.
OnMoved = Callable[[list[TaskRef]], None]


@dataclass(frozen=True)
class HeldMessage:
    """A task message waiting in a tenant queue, as the broker keeps it."""

    headers: dict[str, Any]
    body: bytes
    content_type: str
    content_encoding: str
    properties: dict[str, Any] = field(default_factory=dict)

    @property
    def task_id(self) -> str:
        return str(self.headers.get("id", ""))

    @property
    def task_name(self) -> str:
        return str(self.headers.get("task", ""))

    @property
    def held_at(self) -> float | None:
        """When the task was first held (Unix seconds); None if a version of this
        package that did not record it held it."""
        try:
            return float(self.headers[HELD_AT_HEADER])
        except (KeyError, TypeError, ValueError):
            return None

    @property
    def holds(self) -> int:
        """How many times the task was held."""
        try:
            return int(self.headers.get(HELD_COUNT_HEADER) or 0)
        except (TypeError, ValueError):
            return 0

    @property
    def eta(self) -> str | None:
        """The task's ETA as Celery wrote it (ISO 8601), if it has one."""
        eta = self.headers.get("eta")
        return str(eta) if eta else None


class HeldQueues(Protocol):
    """Tenant queues on one broker. No worker consumes them; these calls move their
    messages (all of them, in order) or look at them."""

    def count(self, queue: str) -> int:
        """Messages waiting; 0 for a queue that does not exist (never creates it)."""
        ...

    def counts(self, queues: Sequence[str]) -> dict[str, int]:
        """Messages waiting in each of *queues* (missing: 0), in one round trip or
        over one connection."""
        ...

    def peek(self, queue: str, limit: int = 100) -> list[HeldMessage]:
        """The oldest *limit* messages, leaving the queue as it was."""
        ...

    def release(
        self, queue: str, *, marker: str, on_moved: OnMoved | None = None, behind: bool = False
    ) -> int:
        """Move every message back to where it was meant to go, in order; *behind*:
        behind what is queued there already, even for a small release (which a Redis
        broker otherwise puts before it)."""
        ...

    def drain(self, queue: str, sink: Callable[[list[HeldMessage]], None], batch: int = 500) -> int:
        """Hand every message to *sink*, a batch at a time, removing a batch only once
        *sink* returned; returns how many."""
        ...
