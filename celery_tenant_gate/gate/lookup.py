"""Knowing each tenant's state: the in-process cache, the shared store, and the State
API, asked by one process at a time per tenant.

The hot path (:meth:`TenantStates.verdict` on a cached tenant) is one dict look-up
and one clock read. Everything else happens on a miss. The worker's consumer asks
with ``wait=False`` and never waits on HTTP: a stored answer that is due is used
(within its grace) while a background thread asks the State API, and a tenant with
no stored answer at all waits (its task is held) until that thread has one. While the
store cannot be read, the consumer decides from what this process last saw, for a
bounded time (``tenant_gate_store_outage_grace``), without waiting on Redis either.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace

import redis

from celery_tenant_gate.config.settings import GateConfig
from celery_tenant_gate.io.store.cache import LocalCache
from celery_tenant_gate.io.store.state_store import StateStore, connect
from celery_tenant_gate.io.superoffice.state_api import StateClient
from celery_tenant_gate.model.ids import compile_pattern, validate_tenant_id
from celery_tenant_gate.model.record import Source, TenantRecord
from celery_tenant_gate.model.states import TenantState
from celery_tenant_gate.model.verdicts import Verdict

from .asking import StateAsker
from .refresher import Refresher
from .watching import StoreGuardLike, StoreWatch

logger = logging.getLogger(__name__)


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
        self.asker = StateAsker(store, client, config, self._wait_for_change, clock=clock)
        self._pattern = compile_pattern(config.tenant_id_pattern)
        #: The last record seen per tenant: what is left when Redis cannot be read.
        self._last_seen: dict[str, TenantRecord] = {}
        self._refresher = Refresher()
        #: Checks that the store still has its data (see :mod:`.storeloss`); None: unchecked.
        self.store_guard: StoreGuardLike | None = None
        #: The change listener and whether the store answers (see :mod:`.watching`).
        self.watch = StoreWatch(
            store,
            lambda: self.cache,
            lambda: self.store_guard,
            config.store_outage_grace,
            clock=clock,
        )
        #: Whether the store answers; while it does not, nothing here waits on it.
        self.health = self.watch.health
        #: Called with a tenant id when a background look-up finds that the tenant's
        #: state runs again (or for the first time): the worker sweeps at once.
        self.on_runnable: list[Callable[[str], None]] = []
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

        With ``wait=False`` nothing waits on HTTP: a stored answer that is due is used
        as it is (the policy's grace period applies), and a tenant with none gets the
        failure policy's verdict (hold, by default), while a background thread asks the
        State API. Never waits on the store while it is known to be down. Never raises
        for a State API or Redis failure: the failure policy decides. Raises
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

    def known(self, context_id: str, *, wait: bool = True) -> Known:
        """The verdict and the record together, in one look-up (as :meth:`verdict`)."""
        entry = self.cache.entries.get(context_id)
        if entry is not None and entry[0] > self._clock():
            self.hits += 1
            return entry[1]
        return self._lookup(context_id, wait=wait)

    # -- writes ---------------------------------------------------------------------

    def refresh(self, context_id: str, *, raise_errors: bool = False) -> TenantRecord | None:
        """Ask the State API now, whatever the cached validity, and store the answer.

        A failed call is recorded (as on every look-up); with *raise_errors* its
        :class:`~celery_tenant_gate.errors.StateAPIError` is raised afterwards.
        """
        ctx = validate_tenant_id(context_id, self._pattern)
        known = self.store.get(ctx)
        try:
            return self.asker.ask(ctx, known, raise_errors=raise_errors)
        finally:
            self.cache.invalidate(ctx)

    def learn(
        self, state: TenantState, *, source: Source, observed_at: float | None = None
    ) -> bool:
        """Store a state told by a notification or by hand. False if a newer one is stored."""
        ctx = validate_tenant_id(state.context_id, self._pattern)
        now = self._clock()
        fresh_until = self.asker.fresh_until(state, now)
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
        self.watch.close()
        self._refresher.shutdown()
        self.cache.reset(enabled=False)

    # -- the slow path ------------------------------------------------------------

    def _lookup(self, context_id: str, *, wait: bool = True) -> Known:
        self.misses += 1
        ctx = validate_tenant_id(context_id, self._pattern)
        self.watch.ensure_listening()
        if self.health.down:
            return self._offline(ctx)
        token = self.cache.token(ctx)
        try:
            record = self.store.get(ctx)
            if record is None and self.store_guard is not None:
                record = self.store_guard.record_for(ctx)  # the store may have lost it
            due = record is None or record.is_due(self._clock())
            if due and not wait:
                # Decide from what is stored (nothing: the failure policy), for a short
                # while; the new answer, once stored, is announced and replaces this
                # one in every process's cache.
                self._refresh_later(ctx, record)
                if record is None:
                    return Known(self.policy.decide(None, self._clock()), None)
                return self._remember(ctx, token, record, self._clock() + self.config.min_ttl)
            if due:
                record = self._refresh_shared(ctx, record)
        except redis.RedisError as exc:
            self.health.failed(exc)
            return self._offline(ctx)
        return self._remember(ctx, token, record)

    def _offline(self, ctx: str) -> Known:
        """The verdict while the store cannot be read: from the record this process
        last saw, a running one for ``store_outage_grace`` seconds of the outage."""
        record = self._last_seen.get(ctx)
        verdict = self.policy.decide(record, self._clock())
        if verdict is Verdict.RUN and self.health.outage_lasted() > self.config.store_outage_grace:
            verdict = self.policy.failure_verdict
        return Known(verdict, record)

    def last_seen(self, context_id: str) -> TenantRecord | None:
        """The record this process last read of the tenant (None if none)."""
        return self._last_seen.get(context_id)

    def _wait_for_change(self, timeout: float) -> None:
        self.cache.wait_for_change(timeout)  # the cache of now: a forked child has its own

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

    def _refresh_later(self, ctx: str, known: TenantRecord | None) -> None:
        """Ask the State API for *ctx* in a background thread (once at a time)."""
        self._refresher.submit(ctx, lambda: self._refresh_in_background(ctx, known))

    def _refresh_in_background(self, ctx: str, known: TenantRecord | None) -> None:
        record = self._refresh_shared(ctx, known)
        if record is None or not self.on_runnable:
            return
        now = self._clock()
        if self._runs(record, now) and (known is None or not self._runs(known, now)):
            for callback in list(self.on_runnable):
                callback(ctx)

    def _runs(self, record: TenantRecord, now: float) -> bool:
        """Whether the tenant's state (its pause aside) lets its tasks run."""
        return self.policy.decide(replace(record, paused=False), now) is Verdict.RUN

    def _refresh_shared(self, ctx: str, known: TenantRecord | None) -> TenantRecord | None:
        record = self.asker.refresh_shared(ctx, known)
        self.cache.invalidate(ctx)
        return record

    def _after_fork(self) -> None:
        # The parent's listener thread does not exist here, and its cache may miss
        # changes from now on: start over.
        self.watch.after_fork()
        self._refresher.after_fork()  # the parent's threads do not exist here
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
