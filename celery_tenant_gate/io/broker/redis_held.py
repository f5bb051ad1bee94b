"""Held messages in tenant queues on a Redis broker (kombu's Redis transport).

kombu keeps a queue as a list (``LPUSH`` to publish, ``BRPOP`` to consume: the
oldest message is at the right end) plus one list per priority step
(``{queue}\\x06\\x16{3,6,9}``). Messages are moved as they are stored, by a Lua
script, a bounded chunk per run (see :mod:`.redis_release`), so nothing is re-encoded
and Redis never works for more than a few milliseconds at a time.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence

import redis

from celery_tenant_gate._compat import kombu_redis_message
from celery_tenant_gate.io.lua import lua_script
from celery_tenant_gate.io.store.deadletters import DeadLetter, DeadLetters
from celery_tenant_gate.model.held import HeldMessage, OnMoved

from .redis_release import (
    CHUNK,
    CHUNK_BYTES,
    PRIORITY_STEPS,
    SEP,
    ChunkedRelease,
    Rejected,
    keys,
    lua_pattern,
    rejects_key,
)

__all__ = ["PRIORITY_STEPS", "SEP", "RedisHeldQueues"]

logger = logging.getLogger(__name__)

_GLOB_SPECIAL = re.compile(r"[*?\[\]\\]")  # escaped in a SCAN MATCH pattern

# Moves a bounded chunk of held messages, as stored, to the queues their headers name.
_RELEASE = lua_script(__package__, "release")


def _letter(ctx: str, entry: bytes, at: float) -> DeadLetter:
    rejected = Rejected.parse(entry)
    message = _loose(rejected.raw)
    reason = f"not released: {rejected.reason}"
    logger.warning(
        "tenant-gate: dropped held task %s[%s] of %s: %s",
        message.task_name,
        message.task_id,
        ctx,
        reason,
    )
    return DeadLetter.of(message, reason, at)


def _oldest(client: redis.Redis, key: str, count: int) -> list[bytes]:
    """The oldest *count* messages of the list *key* (fewer if it is shorter), oldest
    first. By index from the tail, pipelined: LRANGE with negative indexes walks a long
    list from its head (Redis 7.0), milliseconds for a million held tasks."""
    pipe = client.pipeline(transaction=False)
    for index in range(1, count + 1):
        pipe.lindex(key, -index)
    found: list[bytes] = []
    for raw in pipe.execute():
        if raw is None:
            break
        found.append(raw)
    return found


def _loose(raw: bytes) -> HeldMessage:
    """*raw* as a :class:`HeldMessage`; the bytes as they are if it is not a kombu
    envelope (a rejected message may be anything)."""
    try:
        return kombu_redis_message(raw)
    except Exception:
        return HeldMessage(headers={}, body=raw, content_type="", content_encoding="")


class RedisHeldQueues:
    """Tenant queues on a Redis broker.

    *queue_template* names the tenant queues (``{ctx}``: the tenant): a release never
    moves a message into one. A message it refuses (see ``lua/release.lua``) goes to
    *dead_letters*, under the tenant of its queue, with the reason; without a
    dead-letter store it waits in the list ``{queue}\\x06\\x16rejected``.
    """

    def __init__(
        self,
        client: redis.Redis,
        default_queue: str = "celery",
        *,
        queue_template: str = "tenant.{ctx}",
        dead_letters: DeadLetters | None = None,
        chunk: int = CHUNK,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        self.client = client
        self.default_queue = default_queue
        self.queue_template = queue_template
        self.dead_letters = dead_letters
        self.chunk = chunk
        self.chunk_bytes = chunk_bytes
        self._release = client.register_script(_RELEASE)
        self._tenant_pattern = lua_pattern(queue_template)
        first, *rest = (re.escape(part) for part in queue_template.split("{ctx}"))
        self._tenant_of = re.compile(first + "(?P<ctx>.+)" + "(?P=ctx)".join(rest))

    def count(self, queue: str) -> int:
        return self.counts([queue])[queue]

    def tenants(self) -> list[str]:
        """The tenants whose queue holds messages (kombu deletes an empty list), sorted.
        A SCAN of the broker's keys: for recovering a lost store, never the hot path."""
        pattern = _GLOB_SPECIAL.sub(r"\\\g<0>", self.queue_template).replace("{ctx}", "*")
        found = set()
        for key in self.client.scan_iter(match=pattern, count=1000):
            queue = (key.decode() if isinstance(key, bytes) else str(key)).split(SEP)[0]
            tenant = self._tenant_of.fullmatch(queue)
            if tenant:
                found.add(tenant["ctx"])
        return sorted(found)

    def counts(self, queues: Sequence[str]) -> dict[str, int]:
        pipe = self.client.pipeline(transaction=False)
        for queue in queues:
            for key in keys(queue):
                pipe.llen(key)
        lengths = iter(pipe.execute())
        return {queue: sum(next(lengths) for _ in keys(queue)) for queue in queues}

    def peek(self, queue: str, limit: int = 100) -> list[HeldMessage]:
        found: list[HeldMessage] = []
        for key in keys(queue):
            if len(found) >= limit:
                break
            found.extend(_loose(raw) for raw in _oldest(self.client, key, limit - len(found)))
        return found

    def release(
        self,
        queue: str,
        *,
        marker: str = "",
        on_moved: OnMoved | None = None,
        behind: bool = False,
    ) -> int:
        """Move what *queue* holds now back to the queues its messages were meant for,
        in order, a chunk per script run (see :mod:`.redis_release`); *on_moved* is
        told each chunk's tasks; *behind*: at the publishing end even if the release
        fits in one run. Messages held while it runs wait for the next release.
        Returns how many were moved; the refused ones are dead-lettered."""
        self._dead_letter_rejected(queue)  # left by a release that was interrupted
        return ChunkedRelease(
            self.client,
            self._release,
            queue,
            self.default_queue,
            self._tenant_pattern,
            chunk=self.chunk,
            chunk_bytes=self.chunk_bytes,
            on_moved=on_moved,
            on_rejected=lambda: self._dead_letter_rejected(queue),
            behind=behind,
        ).run()

    def _dead_letter_rejected(self, queue: str, batch: int = 500) -> None:
        """Record the messages a release refused in the dead-letter store, with their
        reasons, each removed from the rejects list once recorded."""
        key = rejects_key(queue)
        waiting: int = self.client.llen(key)
        if not waiting:
            return
        if self.dead_letters is None:
            logger.warning(
                "tenant-gate: %d held message(s) of %s not released (bad route); "
                "no dead-letter store: they wait in the Redis list %r",
                waiting,
                queue,
                key,
            )
            return
        found = self._tenant_of.fullmatch(queue)
        ctx = found["ctx"] if found else queue
        while waiting > 0:
            raw = _oldest(self.client, key, min(batch, waiting))
            if not raw:
                break
            now = time.time()
            try:
                self.dead_letters.record(ctx, [_letter(ctx, item, now) for item in raw])
            except redis.RedisError:
                # They stay in the rejects list: the next release hands them over.
                logger.exception("tenant-gate: could not dead-letter messages of %s", queue)
                return
            self.client.ltrim(key, 0, -(len(raw) + 1))
            waiting -= len(raw)

    def drain(self, queue: str, sink: Callable[[list[HeldMessage]], None], batch: int = 500) -> int:
        """Hand what *queue* holds now to *sink*, a batch at a time, each batch removed
        once *sink* returned; messages held meanwhile wait for the next drain."""
        total = 0
        for key in keys(queue):
            waiting: int = self.client.llen(key)
            while waiting > 0:
                raw = _oldest(self.client, key, min(batch, waiting))
                if not raw:
                    break
                sink([_loose(item) for item in raw])
                # Remove exactly the ones handed over (from the old end; new ones
                # may have been pushed at the other end meanwhile).
                self.client.ltrim(key, 0, -(len(raw) + 1))
                total += len(raw)
                waiting -= len(raw)
        return total
