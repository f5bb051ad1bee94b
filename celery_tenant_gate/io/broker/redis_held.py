"""Held messages in tenant queues on a Redis broker (kombu's Redis transport).

kombu keeps a queue as a list (``LPUSH`` to publish, ``BRPOP`` to consume: the
oldest message is at the right end) plus one list per priority step
(``{queue}\\x06\\x16{3,6,9}``). Messages are moved as they are stored, by a Lua
script, so nothing is re-encoded and a release takes milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import redis

from celery_tenant_gate._compat import (
    KOMBU_REDIS_PRIORITY_STEPS,
    KOMBU_REDIS_SEP,
    kombu_redis_message,
)
from celery_tenant_gate.io.lua import lua_script
from celery_tenant_gate.model.held import HeldMessage, OnMoved, TaskRef

SEP = KOMBU_REDIS_SEP
#: The suffixes of a queue's lists, one a priority step ("": the queue's own name).
PRIORITY_STEPS = tuple(str(step) if step else "" for step in KOMBU_REDIS_PRIORITY_STEPS)

# Moves every held message, as stored, to the queue it was meant for (see its header).
_RELEASE = lua_script(__package__, "release")


def _keys(queue: str) -> list[str]:
    return [queue if not step else f"{queue}{SEP}{step}" for step in PRIORITY_STEPS]


class RedisHeldQueues:
    """Tenant queues on a Redis broker."""

    def __init__(self, client: redis.Redis, default_queue: str = "celery") -> None:
        self.client = client
        self.default_queue = default_queue
        self._release = client.register_script(_RELEASE)

    def count(self, queue: str) -> int:
        return self.counts([queue])[queue]

    def counts(self, queues: Sequence[str]) -> dict[str, int]:
        pipe = self.client.pipeline(transaction=False)
        for queue in queues:
            for key in _keys(queue):
                pipe.llen(key)
        lengths = iter(pipe.execute())
        return {queue: sum(next(lengths) for _ in _keys(queue)) for queue in queues}

    def peek(self, queue: str, limit: int = 100) -> list[HeldMessage]:
        found: list[HeldMessage] = []
        for key in _keys(queue):
            if len(found) >= limit:
                break
            raw: list[Any] = self.client.lrange(key, -(limit - len(found)), -1)
            found.extend(kombu_redis_message(item) for item in reversed(raw))
        return found

    def release(self, queue: str, *, marker: str = "", on_moved: OnMoved | None = None) -> int:
        if on_moved is None:
            moved: int = self._release(keys=[], args=[queue, SEP, self.default_queue, "0"])
            return moved
        moved, *told = self._release(keys=[], args=[queue, SEP, self.default_queue, "1"])
        ids, names, dests = (column.decode().split("\x1e") if moved else [] for column in told)
        on_moved(list(map(TaskRef, ids, names, dests)))
        return int(moved)

    def drain(self, queue: str, sink: Callable[[list[HeldMessage]], None], batch: int = 500) -> int:
        total = 0
        for key in _keys(queue):
            while True:
                raw: list[Any] = self.client.lrange(key, -batch, -1)
                if not raw:
                    break
                sink([kombu_redis_message(item) for item in reversed(raw)])
                # Remove exactly the ones handed over (from the old end; new ones
                # may have been pushed at the other end meanwhile).
                self.client.ltrim(key, 0, -(len(raw) + 1))
                total += len(raw)
        return total
