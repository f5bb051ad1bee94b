"""Knowing each tenant's state: the in-process cache, the shared store, and the State
API, asked by one process at a time per tenant.

The hot path (:meth:`TenantStates.verdict` on a cached tenant) is one dict look-up
and one clock read. Everything else happens on a miss. The worker's consumer asks
with ``wait=False``: a stored answer that is due is used (within its grace) while a
background thread asks the State API, so the event loop never waits on HTTP.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import redis

from celery_tenant_gate.config.settings import GateConfig
from celery_tenant_gate.io.store.cache import ChangeListener, LocalCache
from celery_tenant_gate.io.store.state_store import StateStore, connect
from celery_tenant_gate.io.superoffice.state_api import StateClient
from celery_tenant_gate.model.errors import StateAPIError
from celery_tenant_gate.model.ids import compile_pattern, validate_tenant_id
from celery_tenant_gate.model.record import Source, TenantRecord
from celery_tenant_gate.model.states import TenantState
from celery_tenant_gate.model.verdicts import Verdict

logger = logging.getLogger(__name__)


class StoreGuardLike(Protocol):
    """What the look-up asks of :class:`~.storeloss.StoreGuard`."""

    def check(self) -> object: ...

    def record_for(self, ctx: str) -> TenantRecord | None: ...


@dataclass(frozen=True)
class Known:
    """A cached answer: the verdict and the record it came from."""

    verdict: Verdict
    record: TenantRecord | None


class TenantStates:
    """Answers "may tenant X run now?" for one process, consistently across all.

    >>> states = TenantStates.from_config(GateConfig(redis_url="redis://localhost"))
    >>> states.verdict("Cust12345")  # doctest: +SKIP
    <Verdict.RUN: 'run'>
    """

    def __init__(
        self,
        store: StateStore,
        client: StateClient,
        config: GateConfig,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.client = client
        self.config = config
        self.policy = config.policy
        self.cache: LocalCache[Known] = LocalCache(config.local_cache_size)
        self._clock = clock
        self._pattern = compile_pattern(config.tenant_id_pattern)
        #: The last record seen per tenant: what is left when Redis cannot be read.
        self._last_seen: dict[str, TenantRecord] = {}
        self._listener: ChangeListener | None = None
        self._listener_lock = threading.Lock()
        self._refresher: ThreadPoolExecutor | None = None
        self._refreshing: set[str] = set()
        self._refresh_lock = threading.Lock()
        #: Checks that the store still has its data (see :mod:`.storeloss`); None: unchecked.
        self.store_guard: StoreGuardLike | None = None
        #: Look-ups the cache answered, and those it could not (for the metrics).
        self.hits = 0
        self.misses = 0
        _INSTANCES.add(self)

    @classmethod
    def from_config(cls, config: GateConfig, client: redis.Redis | None = None) -> TenantStates:
        if client is None:
            client = connect(config.require_redis_url())
        return cls(StateStore(client, config.key_prefix), StateClient.from_config(config), config)

    # -- the hot path -------------------------------------------------------------

    def verdict(self, context_id: str, *, wait: bool = True) -> Verdict:
        """Run, hold or drop, for a task of *context_id*, now.

        With ``wait=False``, a stored answer that is due is used as it is (the policy's
        grace period applies) while a background thread asks the State API; only a
        tenant never seen is asked at once. Never raises for a State API or Redis
        failure: the failure policy decides. Raises
        :class:`~celery_tenant_gate.errors.InvalidTenantId` for a malformed id.
        """
        entry = self.cache.entries.get(context_id)
        if entry is not None and entry[0] > self._clock():
            self.hits += 1
            return entry[1].verdict
        return self._lookup(context_id, wait=wait).verdict

    def may_run(self, context_id: str) -> bool:
        return self.verdict(context_id) is Verdict.RUN

    def record(self, context_id: str, *, wait: bool = True) -> TenantRecord | None:
        """The tenant's shared record (its endpoint, why it is paused, ...), fresh
        (with ``wait=False``, as :meth:`verdict` has it)."""
        entry = self.cache.entries.get(context_id)
        if entry is not None and entry[0] > self._clock():
            self.hits += 1
            return entry[1].record
        return self._lookup(context_id, wait=wait).record

    # -- writes ---------------------------------------------------------------------

    def refresh(self, context_id: str, *, raise_errors: bool = False) -> TenantRecord | None:
        """Ask the State API now, whatever the cached validity, and store the answer.

        A failed call is recorded (as on every look-up); with *raise_errors* its
        :class:`~celery_tenant_gate.errors.StateAPIError` is raised afterwards.
        """
        ctx = validate_tenant_id(context_id, self._pattern)
        known = self.store.get(ctx)
        return self._ask(ctx, known, raise_errors=raise_errors)

    def learn(
        self, state: TenantState, *, source: Source, observed_at: float | None = None
    ) -> bool:
        """Store a state told by a notification or by hand. False if a newer one is stored."""
        ctx = validate_tenant_id(state.context_id, self._pattern)
        now = self._clock()
        fresh_until = self._fresh_until(state, now)
        _, applied = self.store.write_state(
            state,
            source=source,
            observed_at=now if observed_at is None else observed_at,
            learnt_at=now,
            fresh_until=fresh_until,
            check_after=fresh_until,
        )
        self.cache.invalidate(ctx)
        return applied

    def set_paused(
        self, context_id: str, paused: bool, reason: str = "", by: str = "manual"
    ) -> bool:
        """Pause or unpause a tenant for every worker. True when that changed anything."""
        ctx = validate_tenant_id(context_id, self._pattern)
        changed = self.store.set_paused(ctx, paused, reason=reason, at=self._clock(), by=by)
        self.cache.invalidate(ctx)
        return changed

    def close(self) -> None:
        """Stop listening for changes (the cache stays off until used again)."""
        with self._listener_lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            listener.stop()
        with self._refresh_lock:
            refresher, self._refresher = self._refresher, None
        if refresher is not None:
            refresher.shutdown(wait=False)
        self.cache.reset(enabled=False)

    # -- the slow path ------------------------------------------------------------

    def _lookup(self, context_id: str, *, wait: bool = True) -> Known:
        self.misses += 1
        ctx = validate_tenant_id(context_id, self._pattern)
        self._ensure_listening()
        token = self.cache.token(ctx)
        try:
            record = self.store.get(ctx)
            if record is None and self.store_guard is not None:
                record = self.store_guard.record_for(ctx)  # the store may have lost it
            due = record is None or record.is_due(self._clock())
            if due and record is not None and not wait:
                # Decide from what is stored, for a short while; the new answer, once
                # stored, is announced and replaces this one in every process's cache.
                self._refresh_later(ctx, record)
                return self._remember(ctx, token, record, self._clock() + self.config.min_ttl)
            if due:
                record = self._refresh_shared(ctx, record)
        except redis.RedisError as exc:
            record = self._last_seen.get(ctx)
            verdict = self.policy.decide(record, self._clock())
            logger.warning(
                "tenant-gate: cannot read the state of %s from Redis (%s); verdict %s "
                "from what this process last saw",
                ctx,
                exc,
                verdict.value,
            )
            return Known(verdict, record)
        return self._remember(ctx, token, record)

    def _remember(
        self,
        ctx: str,
        token: tuple[int, int],
        record: TenantRecord | None,
        until: float | None = None,
    ) -> Known:
        """The verdict on *record*, cached (under *token*) until *until*, by default
        until the record is due or time alone changes the verdict."""
        now = self._clock()
        known = Known(self.policy.decide(record, now), record)
        if record is None:
            return known
        self._last_seen[ctx] = record
        if until is None:
            until = record.check_after
            changes_at = record.fresh_until + self.policy.grace_period
            if changes_at > now:  # time alone changes the verdict then
                until = min(until, changes_at)
        self.cache.put(ctx, token, until, known)
        return known

    def _refresh_later(self, ctx: str, known: TenantRecord) -> None:
        """Ask the State API for *ctx* in a background thread (once at a time)."""
        with self._refresh_lock:
            if ctx in self._refreshing:
                return
            self._refreshing.add(ctx)
            if self._refresher is None:
                self._refresher = ThreadPoolExecutor(2, thread_name_prefix="tenant-gate-refresh")
            refresher = self._refresher
        refresher.submit(self._refresh_in_background, ctx, known)

    def _refresh_in_background(self, ctx: str, known: TenantRecord) -> None:
        try:
            self._refresh_shared(ctx, known)
        except Exception:  # a background thread has no caller to tell
            logger.exception("tenant-gate: refreshing the state of %s failed", ctx)
        finally:
            with self._refresh_lock:
                self._refreshing.discard(ctx)

    def _refresh_shared(self, ctx: str, known: TenantRecord | None) -> TenantRecord | None:
        """Get a current record, asking the State API only if no other process is."""
        timeout = self.config.lock_timeout
        deadline = time.monotonic() + timeout
        while True:
            token = self.store.try_lock(ctx, timeout)
            if token is not None:
                try:
                    return self._ask(ctx, known)
                finally:
                    self.store.unlock(ctx, token)
            # Another process is asking: wait for its answer, announced on the channel.
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    logger.warning(
                        "tenant-gate: gave up waiting %.1fs for another process to look up %s",
                        timeout,
                        ctx,
                    )
                    return known
                self.cache.wait_for_change(min(remaining, 0.05))
                record, locked = self.store.get_with_lock(ctx)
                if record is not None and not record.is_due(self._clock()):
                    return record
                known = record or known
                if not locked:
                    break  # it gave up or crashed: take the lock ourselves

    def _ask(
        self, ctx: str, known: TenantRecord | None, *, raise_errors: bool = False
    ) -> TenantRecord | None:
        attempted_at = self._clock()
        try:
            state = self.client.get(ctx)
        except StateAPIError as exc:
            retry = max(self.config.error_retry_interval, getattr(exc, "retry_after", 0) or 0)
            logger.warning("tenant-gate: %s; asking again in %.0fs", exc, retry)
            record, _ = self.store.write_failure(
                ctx, str(exc), attempted_at=attempted_at, check_after=attempted_at + retry
            )
            if raise_errors:
                self.cache.invalidate(ctx)
                raise
        else:
            learnt_at = self._clock()
            fresh_until = self._fresh_until(state, learnt_at)
            record, applied = self.store.write_state(
                state,
                source=Source.PULL,
                observed_at=attempted_at,
                learnt_at=learnt_at,
                fresh_until=fresh_until,
                check_after=fresh_until,
            )
            if not applied:
                logger.info("tenant-gate: a newer state of %s was stored meanwhile", ctx)
        self.cache.invalidate(ctx)
        return record

    def _fresh_until(self, state: TenantState, now: float) -> float:
        lo, hi = self.config.min_ttl, self.config.max_ttl
        ttl = lo if state.valid_until is None else state.valid_until.timestamp() - now
        return now + min(max(ttl, lo), hi)

    # -- listening ----------------------------------------------------------------

    def _ensure_listening(self) -> None:
        if self._listener is not None:
            return
        with self._listener_lock:
            if self._has_listener():
                return
            listener = ChangeListener(
                self.store.client,
                self.store.channel,
                on_change=self.cache.invalidate,
                on_connection=self._on_connection,
            )
            listener.start()
            self._listener = listener

    def _on_connection(self, up: bool) -> None:
        if up and self.store_guard is not None:
            self.store_guard.check()  # changes were missed: maybe all of them
        self.cache.reset(enabled=up)

    def _has_listener(self) -> bool:
        return self._listener is not None

    def _after_fork(self) -> None:
        # The parent's listener thread does not exist here, and its cache may miss
        # changes from now on: start over.
        self._listener = None
        self._listener_lock = threading.Lock()
        self._refresher = None  # the parent's threads do not exist here
        self._refreshing = set()
        self._refresh_lock = threading.Lock()
        self.cache = LocalCache(self.config.local_cache_size)
        self._last_seen = {}
        self.client.forget_connections()
        if self.client.breaker is not None:
            self.client.breaker.after_fork()


_INSTANCES: weakref.WeakSet[TenantStates] = weakref.WeakSet()


def _reset_after_fork() -> None:
    for instance in list(_INSTANCES):
        instance._after_fork()


os.register_at_fork(after_in_child=_reset_after_fork)
