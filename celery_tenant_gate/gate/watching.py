"""Keeping a process's cache true to the store: the change listener empties an entry
the moment its tenant changes anywhere; while the store cannot be reached the cache is
kept (bounded by ``tenant_gate_store_outage_grace``), since no change can be made
meanwhile; once it answers again everything is read anew, after the store guard has
checked that the store kept its data."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from celery_tenant_gate._compat import redis_pool_settings
from celery_tenant_gate.io.store.cache import ChangeListener, LocalCache
from celery_tenant_gate.io.store.health import StoreHealth
from celery_tenant_gate.io.store.state_store import StateStore
from celery_tenant_gate.model.record import TenantRecord


class StoreGuardLike(Protocol):
    """What the look-up asks of :class:`~.storeloss.StoreGuard`."""

    def check(self) -> object: ...

    def record_for(self, ctx: str) -> TenantRecord | None: ...


class StoreWatch:
    """The change listener and the store's health, for the cache *cache_of()* gives
    (a forked child has a cache of its own). *guard_of()* gives the store guard, if
    any; *outage_grace* is how long a cached verdict outlives the store."""

    def __init__(
        self,
        store: StateStore,
        cache_of: Callable[[], LocalCache[Any]],
        guard_of: Callable[[], StoreGuardLike | None],
        outage_grace: float,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self._cache_of = cache_of
        self._guard_of = guard_of
        self._outage_grace = outage_grace
        self._clock = clock
        #: Whether the store answers; while it does not, nothing waits on it.
        self.health = StoreHealth(
            store.client.ping, on_recovered=self._recovered, clock=clock, name=_address(store)
        )
        self.listener: ChangeListener | None = None
        self._lock = threading.Lock()

    def ensure_listening(self) -> None:
        """Start the listener, if it is not running yet (cheap when it is)."""
        if self.listener is not None:
            return
        with self._lock:
            if self._listening():
                return
            listener = ChangeListener(
                self.store.client,
                self.store.channel,
                on_change=lambda ctx: self._cache_of().invalidate(ctx),
                on_connection=self._on_connection,
                reconnect_delay_max=2.0,
            )
            listener.start()
            self.listener = listener

    def _listening(self) -> bool:
        return self.listener is not None

    def close(self) -> None:
        with self._lock:
            listener, self.listener = self.listener, None
        if listener is not None:
            listener.stop()
        self.health.close()

    def after_fork(self) -> None:
        """In a new child process: the parent's threads do not exist here."""
        self.listener = None
        self._lock = threading.Lock()
        self.health.after_fork()

    def _on_connection(self, up: bool) -> None:
        """The listener (re)subscribed, or lost its connection."""
        cache = self._cache_of()
        if up:
            self.health.recovered()
            guard = self._guard_of()
            if guard is not None:
                guard.check()  # changes were missed: maybe all of them
            cache.reset(enabled=True)
            return
        # Keep what is cached for now, bounded: if the store is down, it is all there
        # is; if only the channel broke, the probe finds the store up at once and
        # the cache is emptied (changes may be missed until the listener is back).
        cache.suspend(self._clock() + self._outage_grace)
        self.health.failed("lost the change channel")

    def _recovered(self) -> None:
        # Changes may have been missed; what is cached is read anew (stored only
        # once the listener is subscribed again).
        listener = self.listener
        self._cache_of().reset(enabled=listener is not None and listener.subscribed.is_set())


def _address(store: StateStore) -> str:
    """host:port/db of the store's Redis, for the log (no credentials)."""
    kwargs = redis_pool_settings(store.client.connection_pool).kwargs
    where = kwargs.get("path") or f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"
    return f"{where}/{kwargs.get('db', 0)}"
