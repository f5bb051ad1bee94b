"""The shared tenant state in Redis: one hash a tenant, a set of paused tenants, a lock
a tenant for look-ups, and a pub/sub channel that announces every change.

Keys (``{p}`` is ``tenant_gate_key_prefix``)::

    {p}:tenant:{ctx}   hash   the TenantRecord fields
    {p}:paused         zset   paused tenants, scored by when they were paused
    {p}:held           zset   tenants whose queue may hold messages, by last hold
    {p}:lock:{ctx}     string who is asking the State API for ctx right now
    {p}:changes        channel  ctx of every tenant whose hash changed
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from celery_tenant_gate.io.lua import lua_script
from celery_tenant_gate.model.record import Source, TenantRecord, record_from_fields, state_fields
from celery_tenant_gate.model.states import TenantState

# The scripts, in lua/: what each does, its KEYS, ARGV and answer are in its header.
_GUARDED_WRITE = lua_script(__package__, "guarded_write")
_SET_PAUSED = lua_script(__package__, "set_paused")
_NOTIFIED = lua_script(__package__, "notified")
_UNLOCK = lua_script(__package__, "unlock")
_RENEW = lua_script(__package__, "renew")
_RESUMED = lua_script(__package__, "resumed")


def connect(url: str) -> redis.Redis:
    """A Redis client for the shared state.

    redis-py's default retries a lost connection 10 times (about 3 s); a task
    waiting on the gate should learn sooner that Redis is gone, so retry briefly.
    """
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=2.0,
        socket_timeout=5.0,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=0.1, base=0.01), 3),
    )


@dataclass(frozen=True)
class Pause:
    """A pause as the store has it."""

    at: float
    by: str
    reason: str


_ALWAYS = 1e300  # a guard no stored observation time exceeds
_GLOB_SPECIAL = re.compile(r"[*?\[\]\\]")  # escaped in a SCAN MATCH pattern


class StateStore:
    """Reads and writes tenant records in Redis. Thread-safe; holds no state of its own."""

    def __init__(self, client: redis.Redis, prefix: str = "tenant_gate") -> None:
        self.client = client
        self.prefix = prefix
        self.channel = f"{prefix}:changes"
        self.paused_key = f"{prefix}:paused"
        self.held_key = f"{prefix}:held"
        self._guarded_write = client.register_script(_GUARDED_WRITE)
        self._set_paused = client.register_script(_SET_PAUSED)
        self._unlock = client.register_script(_UNLOCK)
        self._renew = client.register_script(_RENEW)
        self._notified = client.register_script(_NOTIFIED)
        self._resumed = client.register_script(_RESUMED)
        #: Told of each pause (a Pause), resume (None) and hold (when) written by this
        #: process: ``on_write(ctx, pause, held_at)`` (see gate/storeloss.py's mirror).
        self.on_write: Callable[[str, Any, float | None], None] | None = None

    def key(self, context_id: str) -> str:
        return f"{self.prefix}:tenant:{context_id}"

    def lock_key(self, context_id: str) -> str:
        return f"{self.prefix}:lock:{context_id}"

    def get(self, context_id: str) -> TenantRecord | None:
        fields = self.client.hgetall(self.key(context_id))
        return record_from_fields(context_id, _text_map(fields))

    def get_with_lock(self, context_id: str) -> tuple[TenantRecord | None, bool]:
        """The record, and whether some process is asking the State API for it now."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self.key(context_id))
        pipe.exists(self.lock_key(context_id))
        fields, locked = pipe.execute()
        return record_from_fields(context_id, _text_map(fields)), bool(locked)

    def write_state(
        self,
        state: TenantState,
        *,
        source: Source,
        observed_at: float,
        learnt_at: float,
        fresh_until: float,
        check_after: float,
    ) -> tuple[TenantRecord, bool]:
        """Store a learnt state unless a newer one is stored. Returns (record, applied)."""
        fields = {
            **state_fields(state),
            "source": source.value,
            "learnt_at": repr(learnt_at),
            "fresh_until": repr(fresh_until),
            "check_after": repr(check_after),
            "error": "",
        }
        return self._write(state.context_id, observed_at, True, fields)

    def write_failure(
        self, context_id: str, error: str, *, attempted_at: float, check_after: float
    ) -> tuple[TenantRecord, bool]:
        """Record a failed look-up (keeping the last known state), unless something
        newer than the attempt was stored meanwhile."""
        fields = {"error": error, "error_at": repr(attempted_at), "check_after": repr(check_after)}
        return self._write(context_id, attempted_at, False, fields)

    def update_endpoint(
        self, context_id: str, *, endpoint: str, api: str, observed_at: float
    ) -> tuple[TenantRecord, bool]:
        """Record a tenant's new server (a Move), keeping its state."""
        return self._write(context_id, observed_at, True, {"endpoint": endpoint, "api": api})

    def set_paused(
        self, context_id: str, paused: bool, *, reason: str, at: float, by: str = "manual"
    ) -> bool:
        """Pause or unpause a tenant. Returns True when that changed its paused flag."""
        changed = self._set_paused(
            keys=[self.key(context_id), self.paused_key],
            args=["1" if paused else "0", reason, repr(at), self.channel, context_id, by],
        )
        if self.on_write is not None and (changed == 1 or not paused):
            self.on_write(context_id, Pause(at, by, reason) if paused else None, None)
        return bool(changed == 1)

    def begin_resume(self, context_id: str, stamp: str) -> None:
        """Record that a resume (stamped *stamp*) is under way, and that it ends the
        waits of notifications and any deletion (announced)."""
        fields = {"resuming": stamp, "resume_not_before": "0", "delete_after": "0"}
        self.set_fields(context_id, {**fields, "deleted": "0"})

    def unpause_resuming(self, context_id: str, stamp: str, *, at: float) -> bool:
        """Unpause the tenant if the resume stamped *stamp* is still the one under way;
        False when a pause or a newer resume overtook it."""
        answer = self._set_paused(
            keys=[self.key(context_id), self.paused_key],
            args=["0", "", repr(at), self.channel, context_id, "manual", stamp],
        )
        if answer != -1 and self.on_write is not None:
            self.on_write(context_id, None, None)
        return bool(answer != -1)

    def end_resume(self, context_id: str, stamp: str) -> bool:
        """Clear the resume stamped *stamp* if it is still the one under way."""
        args = [stamp, self.channel, context_id]
        return bool(self._resumed(keys=[self.key(context_id)], args=args))

    def set_fields(self, context_id: str, fields: Mapping[str, str]) -> TenantRecord:
        """Write record fields that are not ordered by observation (and announce it)."""
        record, _ = self._write(context_id, _ALWAYS, False, fields)
        return record

    def note_notification(self, context_id: str, issued_at: float) -> bool:
        """Record a notification issued at *issued_at*; False if a newer one was applied."""
        applied = self._notified(keys=[self.key(context_id)], args=[repr(issued_at)])
        return bool(applied)

    def mark_held(self, context_id: str, at: float) -> None:
        """Note that the tenant's queue may hold messages (so a sweep looks at it)."""
        self.client.zadd(self.held_key, {context_id: at})
        if self.on_write is not None:
            self.on_write(context_id, None, at)

    def unmark_held(self, context_id: str) -> None:
        self.client.zrem(self.held_key, context_id)

    def retire(self, context_id: str) -> None:
        """Take a deleted tenant out of the paused and held indexes (its record, which
        says deleted, stays): sweeps stop visiting it."""
        pipe = self.client.pipeline(transaction=True)
        pipe.zrem(self.paused_key, context_id)
        pipe.zrem(self.held_key, context_id)
        pipe.execute()

    def held_tenants(self) -> dict[str, float]:
        """Tenants whose queue may hold messages, with when it was last held or released."""
        items: list[Any] = self.client.zrange(self.held_key, 0, -1, withscores=True)
        return {_text(member): float(score) for member, score in items}

    def paused(self) -> dict[str, float]:
        """Every paused tenant, with the time it was paused."""
        items: list[Any] = self.client.zrange(self.paused_key, 0, -1, withscores=True)
        return {_text(member): float(score) for member, score in items}

    def tenants(self) -> list[str]:
        """Every tenant with a record, sorted. A SCAN over the keys: for tools, never
        for the hot path."""
        head = self.key("")
        pattern = _GLOB_SPECIAL.sub(r"\\\g<0>", head) + "*"
        keys = self.client.scan_iter(match=pattern, count=1000)
        return sorted({_text(key)[len(head) :] for key in keys})

    def try_lock(self, context_id: str, ttl: float) -> str | None:
        """Take the tenant's look-up lock for *ttl* seconds; its token, or None if taken."""
        token = secrets.token_hex(8)
        ok = self.client.set(self.lock_key(context_id), token, nx=True, px=int(ttl * 1000))
        return token if ok else None

    def unlock(self, context_id: str, token: str) -> None:
        self._unlock(keys=[self.lock_key(context_id)], args=[token])

    def renew_lock(self, context_id: str, token: str, ttl: float) -> bool:
        """Make the tenant's lock live *ttl* seconds from now, if it is still ours."""
        milliseconds = max(1, int(ttl * 1000))
        return bool(self._renew(keys=[self.lock_key(context_id)], args=[token, milliseconds]))

    def _write(
        self, context_id: str, guard: float, bump: bool, fields: Mapping[str, str]
    ) -> tuple[TenantRecord, bool]:
        args: list[str] = [repr(guard), "1" if bump else "0", self.channel, context_id]
        for name, value in fields.items():
            args.extend((name, value))
        reply = self._guarded_write(keys=[self.key(context_id)], args=args)
        applied = bool(reply.pop())
        flat = [_text(item) for item in reply]
        record = record_from_fields(context_id, dict(zip(flat[::2], flat[1::2], strict=True)))
        assert record is not None  # the script just wrote the hash
        return record, applied


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _text_map(fields: Mapping[Any, Any]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in fields.items()}
