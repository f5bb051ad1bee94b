"""Redis broker: the path of every task message, read from the server (``MONITOR``),
to tell who lost a task that never ran.

kombu's Redis transport takes a message with ``BRPOP`` (the server removes it from
the list) and only then records it as unacknowledged (``HSET unacked <tag> <message>``,
with ``ZADD unacked_index``). A worker killed between the two loses the message:
kombu's own window (kombu#305), gate or no gate. Everything else a message goes
through is visible here: a publish, a hold's copy and a release's move are
``LPUSH``/``RPUSH`` of the message (from a client or from the release's Lua script),
kombu's restore of an unacknowledged one too; an acknowledgement is ``HDEL unacked
<tag>``.

So a lost task whose last trace is a push to a work queue, with no ``HSET unacked``
after it, and which is nowhere in Redis at the end, was popped and never recorded:
lost in kombu's window. Any other lost task is counted as the gate's: one recorded and
then acknowledged without running (a hold that acknowledged before its copy was
pushed), one whose last push was to a tenant queue (a hold never released, or lost by
a release), one still somewhere in Redis.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

TASK_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
#: kombu's default names (the fault workers set no ``unacked_key``).
UNACKED = "unacked"
PUSHES = frozenset({"LPUSH", "RPUSH"})


@dataclass(frozen=True)
class Event:
    """One step of a message: ``push`` to a list (*where*: the list), ``record`` as
    unacknowledged and ``ack`` (*where*: the delivery tag)."""

    kind: str
    where: str


@dataclass(frozen=True)
class Verdict:
    """Who lost a task, and the trace that says so."""

    by_broker: bool
    why: str


class Trace:
    """The events of every task id, from ``MONITOR`` lines (``feed``)."""

    def __init__(self) -> None:
        self.events: dict[str, list[Event]] = defaultdict(list)
        self._tags: dict[str, str] = {}

    def feed(self, command: str) -> None:
        """One command as redis-py's ``Monitor.next_command`` gives it."""
        name, _, rest = command.partition(" ")
        key, _, args = rest.partition(" ")
        name = name.upper()
        if name in PUSHES:
            for task_id in dict.fromkeys(TASK_ID.findall(args)):
                self.events[task_id].append(Event("push", key))
        elif name == "HSET" and key == UNACKED:
            tag, _, message = args.partition(" ")
            for task_id in dict.fromkeys(TASK_ID.findall(message)) if tag else ():
                self._tags[tag] = task_id
                self.events[task_id].append(Event("record", tag))
        elif name == "HDEL" and key == UNACKED:
            for tag in args.split(" "):
                if tag in self._tags:
                    self.events[self._tags[tag]].append(Event("ack", tag))


def verdict(events: Sequence[Event], is_tenant_queue: Callable[[str], bool], left: str) -> Verdict:
    """Who lost a task that never ran, from its *events*; *left*: where it still is in
    Redis at the end ("" if nowhere)."""
    if left:
        return Verdict(False, f"still in {left}")
    pushes = [i for i, event in enumerate(events) if event.kind == "push"]
    if not pushes:
        return Verdict(False, "never seen pushed (no trace)")
    last = events[pushes[-1]]
    after = [event.kind for event in events[pushes[-1] + 1 :]]
    held = sum(1 for i in pushes if is_tenant_queue(events[i].where))
    delivered = sum(1 for event in events if event.kind == "record")
    history = f"delivered {delivered} time(s), held {held} time(s); "
    if is_tenant_queue(last.where):
        return Verdict(False, f"{history}gone from {last.where} without a release")
    if "record" not in after:
        return Verdict(
            True,
            f"{history}pushed to {last.where}, then popped and never recorded as "
            "unacknowledged (kombu's window, kombu#305)",
        )
    return Verdict(False, f"{history}delivered from {last.where} and acknowledged unrun")


class Monitor:
    """A ``MONITOR`` of the broker's Redis, read by a thread into a :class:`Trace`
    until :meth:`close`."""

    def __init__(self, url: str) -> None:
        self.trace = Trace()
        self._client = redis.Redis.from_url(url)
        client: Any = self._client  # redis-py leaves monitor() unannotated
        self._monitor: Any = client.monitor().__enter__()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._mark = f"tgfault-sync-{uuid.uuid4().hex}"
        self._synced = threading.Event()
        self._thread = threading.Thread(target=self._read, name="tgfault-monitor", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            command = str(self._monitor.next_command().get("command", ""))
            if command == f"ECHO {self._mark}":
                self._synced.set()
            with self._lock:
                self.trace.feed(command)

    def sync(self, timeout: float = 30.0) -> None:
        """Return once the reader has read every command sent before this call
        (RuntimeError after *timeout* s)."""
        self._synced.clear()
        self._client.echo(self._mark)
        if not self._synced.wait(timeout):
            raise RuntimeError(f"MONITOR reader not caught up after {timeout} s")

    def events(self, task_id: str) -> list[Event]:
        """The events of *task_id* read so far (see :meth:`sync`)."""
        with self._lock:
            return list(self.trace.events.get(task_id, ()))

    def whereabouts(self, task_ids: Iterable[str]) -> dict[str, str]:
        """Where each of *task_ids* still is in Redis (a list or ``unacked``); absent
        if nowhere."""
        wanted, found = set(task_ids), {}
        client: Any = self._client
        keys = [*client.scan_iter(_type="list", count=1000), UNACKED.encode()]
        for key in keys:
            is_hash = key == UNACKED.encode()
            items = client.hvals(key) if is_hash else client.lrange(key, 0, -1)
            for item in items:
                for task_id in set(TASK_ID.findall(item.decode(errors="replace"))) & wanted:
                    found[task_id] = key.decode(errors="replace")
        return found

    def close(self) -> None:
        self._stop.set()
        self._client.ping()  # one more command, so that the reader wakes up
        self._thread.join(10)
        self._monitor.__exit__(None, None, None)
        self._client.close()
