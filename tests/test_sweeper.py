"""The sweep lock: one sweeper at a time in the cluster, on a short lease that a live
sweeper renews and a dead one leaves behind for at most that long (a real Redis)."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest
import redis

from celery_tenant_gate.io.store.state_store import StateStore
from celery_tenant_gate.worker.sweeper import Sweeper

pytestmark = pytest.mark.timeout(30)


class Stub:
    """What a Sweeper uses of a gate: its store, its lease, and a sweep to watch."""

    def __init__(self, store: StateStore, lease: float, hold: threading.Event | None = None):
        self.states = SimpleNamespace(store=store, health=SimpleNamespace(down=False))
        self.store_guard = SimpleNamespace(tick=lambda: None)
        self.config = SimpleNamespace(lock_lease=lease)
        self.swept = threading.Event()
        self._hold = hold

    def sweep(self) -> dict[str, str]:
        self.swept.set()
        if self._hold is not None:
            self._hold.wait(10)
        return {}


@pytest.fixture
def store(redis_client: redis.Redis, key_prefix: str) -> StateStore:
    return StateStore(redis_client, key_prefix)


def _sweeper(gate: Stub, interval: float) -> Sweeper:
    sweeper = Sweeper(gate, interval)  # type: ignore[arg-type]
    sweeper.start()
    return sweeper


def test_a_sweeper_that_died_holds_the_others_off_for_at_most_its_lease(
    store: StateStore,
) -> None:
    assert store.try_lock("_sweep", 0.5) is not None  # its sweeper was killed
    gate = Stub(store, lease=0.5)
    started = time.monotonic()
    sweeper = _sweeper(gate, interval=0.05)
    try:
        assert gate.swept.wait(5)
        assert 0.3 < time.monotonic() - started < 2.0
    finally:
        sweeper.stop()


def test_a_live_sweeper_keeps_the_lock_past_its_lease(store: StateStore) -> None:
    hold: Any = threading.Event()
    first = Stub(store, lease=0.3, hold=hold)
    one = _sweeper(first, interval=0.05)
    second = Stub(store, lease=0.3)
    two = None
    try:
        assert first.swept.wait(5)
        two = _sweeper(second, interval=0.05)
        assert not second.swept.wait(1.0)  # three leases: renewed all along
        hold.set()
        assert second.swept.wait(5)  # and free once the sweep is over
    finally:
        hold.set()
        one.stop()
        if two is not None:
            two.stop()
