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
from celery_tenant_gate.model.held import HeldMessage, OnMoved, TaskRef

SEP = KOMBU_REDIS_SEP
#: The suffixes of a queue's lists, one a priority step ("": the queue's own name).
PRIORITY_STEPS = tuple(str(step) if step else "" for step in KOMBU_REDIS_PRIORITY_STEPS)

# Moves every held message to the consuming end of the queue it was meant for,
# newest first, so that they come out oldest first and before anything published
# since: the tenant's work runs in the order it was published. Atomic: no worker
# sees half a release. The destination is read from the tenant_gate_route header,
# through kombu's binding table for a named exchange.
_RELEASE = """
local src, sep, fallback, tell = ARGV[1], ARGV[2], ARGV[3], ARGV[4] == '1'
local cache = {}
-- Only when asked (someone listens for task_released): who moved, in the order they
-- will run, as three strings (ids, task names, queues) joined by RS: cheap to build
-- and to read.
local ids, names, dests, at, RS = {}, {}, {}, 0, string.char(30)
local function text(value) if type(value) == 'string' then return value end return '' end
local function dest_for(raw)
    local ok, msg = pcall(cjson.decode, raw)
    if not ok or type(msg) ~= 'table' or type(msg.headers) ~= 'table' then return fallback end
    if tell then ids[at], names[at] = text(msg.headers.id), text(msg.headers.task) end
    local route = msg.headers.tenant_gate_route
    if type(route) ~= 'table' then return fallback end
    local ex, rk = route.exchange, route.routing_key
    if type(ex) ~= 'string' or type(rk) ~= 'string' or rk == '' then return fallback end
    if ex == '' then return rk end
    local key = ex .. sep .. rk
    if cache[key] == nil then
        local dest = rk
        for _, member in ipairs(redis.call('SMEMBERS', '_kombu.binding.' .. ex)) do
            local i = string.find(member, sep, 1, true)
            if i and string.sub(member, 1, i - 1) == rk then
                local rest = string.sub(member, i + #sep)
                local j = string.find(rest, sep, 1, true)
                dest = j and string.sub(rest, j + #sep) or rest
                break
            end
        end
        cache[key] = dest
    end
    return cache[key]
end
local moved = 0
for _, step in ipairs({'', '3', '6', '9'}) do
    local key = src
    if step ~= '' then key = src .. sep .. step end
    if tell then at = moved + redis.call('LLEN', key) + 1 end  -- popped newest first
    while true do
        local raw = redis.call('LPOP', key)
        if not raw then break end
        at = at - 1
        local dest = dest_for(raw)
        if tell then ids[at], names[at], dests[at] = ids[at] or '', names[at] or '', dest end
        if step ~= '' then dest = dest .. sep .. step end
        redis.call('RPUSH', dest, raw)
        moved = moved + 1
    end
end
if tell then
    local function column(t) return table.concat(t, RS, 1, moved) end
    return {moved, column(ids), column(names), column(dests)}
end
return moved
"""


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
