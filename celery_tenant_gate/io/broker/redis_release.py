"""A release of a tenant queue on a Redis broker, one bounded chunk per script run.

``lua/release.lua`` moves at most :data:`CHUNK` messages (and about
:data:`CHUNK_BYTES`) per run, so Redis answers everyone else between two runs; this
module runs it until the tenant queue is empty or as many messages as it held when the
release began are moved. What is held while a release runs waits for the next release
(or the sweep's), so a release ends even when its tenant's tasks keep being held again.

Where released messages go in their queues:

- a release that fits in one run (the usual case) is one atomic run that puts them at
  the consuming end, oldest first, before anything queued (as the gate always did);
- a bigger one (or one asked to go *behind*, as every pass of a resume but its
  first) appends them at the publishing end, oldest first, a chunk per run:
  workers meet them in publish order while the release goes on, across chunks, across
  releasers that race (should the move lock be lost) and after an interrupted release,
  whose mark makes the next release append too. They wait behind what was queued
  before, as on RabbitMQ.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from celery_tenant_gate._compat import KOMBU_REDIS_PRIORITY_STEPS, KOMBU_REDIS_SEP
from celery_tenant_gate.model.held import OnMoved, TaskRef

SEP = KOMBU_REDIS_SEP
#: The suffixes of a queue's lists, one a priority step ("": the queue's own name).
PRIORITY_STEPS = tuple(str(step) if step else "" for step in KOMBU_REDIS_PRIORITY_STEPS)
#: Most messages one script run reads: 3-5 ms of Redis time for Celery messages of
#: about 1 KB on a small shared machine (``python -m bench redis_release_latency``);
#: bigger chunks cost more per message and save no time.
CHUNK = 250
#: Bytes after which one run reads no more messages (big bodies: fewer a run).
CHUNK_BYTES = 256 * 1024
#: Longest exchange, routing key or queue name a released message may name (AMQP's
#: limit for names; longer ones come from a broken or hostile header).
LONGEST_NAME = 255
_RS = "\x1e"


def keys(queue: str) -> list[str]:
    """The lists of *queue*: its own, then one per priority step."""
    return [queue if not step else f"{queue}{SEP}{step}" for step in PRIORITY_STEPS]


def rejects_key(queue: str) -> str:
    """Where a release puts the messages of *queue* it refuses to move."""
    return f"{queue}{SEP}rejected"


def unfinished_key(queue: str) -> str:
    """Set while a release of *queue* that appends at the publishing end is unfinished."""
    return f"{queue}{SEP}unfinished"


def lua_pattern(template: str) -> str:
    """The Lua pattern of the queue names *template* makes (``{ctx}``: one or more
    characters)."""
    parts = [re.sub(r"([^A-Za-z0-9])", r"%\1", part) for part in template.split("{ctx}")]
    return "^" + ".+".join(parts) + "$"


@dataclass(frozen=True)
class Rejected:
    """A held message a release did not move, as stored, and why."""

    raw: bytes
    reason: str

    @classmethod
    def parse(cls, entry: bytes) -> Rejected:
        """An entry of the rejects list: ``<bytes of reason>:<reason><message>``."""
        size, _, rest = entry.partition(b":")
        try:
            length = int(size)
        except ValueError:  # not written by the release script
            return cls(raw=entry, reason="unknown")
        return cls(raw=rest[length:], reason=rest[:length].decode("utf-8", "replace"))


@dataclass
class ChunkedRelease:
    """One release of *queue*: :meth:`run` it once."""

    client: Any
    script: Any
    queue: str
    default_queue: str
    tenant_pattern: str
    chunk: int = CHUNK
    chunk_bytes: int = CHUNK_BYTES
    on_moved: OnMoved | None = None
    #: Called after a run that rejected messages (they wait in :func:`rejects_key`).
    on_rejected: Callable[[], None] | None = None
    #: At the publishing end even when the release fits in one run.
    behind: bool = False

    def run(self) -> int:
        """Move what the queue holds now; returns how many were moved (not rejected)."""
        if self.chunk < 1 or self.chunk_bytes < 1:
            raise ValueError(
                f"chunk ({self.chunk}) and chunk_bytes ({self.chunk_bytes}) must be >= 1"
            )
        pipe = self.client.pipeline(transaction=False)
        for key in keys(self.queue):
            pipe.llen(key)
        budgets: list[int] = list(pipe.execute())
        mode = "head" if sum(budgets) <= self.chunk and not self.behind else "tail"
        moved = 0
        while sum(budgets):
            refused, taken, count, rejected, told = self._run_once(mode, budgets)
            if refused:
                mode = "tail"
                continue
            if not sum(taken):
                break  # emptied meanwhile (a purge)
            budgets = [budget - took for budget, took in zip(budgets, taken, strict=True)]
            moved += count
            if rejected and self.on_rejected is not None:
                self.on_rejected()
            if count and self.on_moved is not None:
                self.on_moved(told)
        if mode == "tail":
            self.client.delete(unfinished_key(self.queue))
        return moved

    def _run_once(
        self, mode: str, budgets: Sequence[int]
    ) -> tuple[bool, list[int], int, int, list[TaskRef]]:
        tell = self.on_moved is not None
        args = [
            self.queue,
            SEP,
            self.default_queue,
            "1" if tell else "0",
            mode,
            self.chunk,
            self.chunk_bytes,
            self.tenant_pattern,
            LONGEST_NAME,
            *budgets,
        ]
        reply = self.script(keys=[], args=args)
        refused, taken, count, rejected = bool(reply[0]), reply[1:5], reply[5], reply[6]
        told: list[TaskRef] = []
        if tell and count:
            ids, names, dests = (_text(column).split(_RS) for column in reply[7:10])
            told = list(map(TaskRef, ids, names, dests))
        return refused, [int(n) for n in taken], int(count), int(rejected), told


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
