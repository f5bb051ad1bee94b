"""The move lock: how long a mover waits for it (an injected clock, no sleeping), and
how long it outlives a mover that died (a real Redis, a short lease)."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from celery_tenant_gate.gate.movelock import MoveBusy, MoveLock
from celery_tenant_gate.io.store.state_store import StateStore

pytestmark = pytest.mark.timeout(30)


class Clock:
    """Monotonic time that moves only when the lock pauses."""

    def __init__(self) -> None:
        self.now = 100.0
        self.pauses: list[float] = []

    def __call__(self) -> float:
        return self.now

    def pause(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds


@pytest.fixture
def store(redis_client: redis.Redis, key_prefix: str) -> StateStore:
    return StateStore(redis_client, key_prefix)


def _taken(store: StateStore, ctx: str, lease: float) -> str:
    token = store.try_lock(f"_move.{ctx}", lease)
    assert token is not None
    return token


def test_a_mover_that_may_not_wait_tries_once(store: StateStore) -> None:
    _taken(store, "Cust1", 30)
    clock = Clock()
    lock = MoveLock(store, "Cust1", lease=2, wait=0, clock=clock, pause=clock.pause)
    with pytest.raises(MoveBusy), lock:
        pass
    assert clock.pauses == []


def test_a_mover_waits_no_longer_than_its_bound(store: StateStore) -> None:
    _taken(store, "Cust1", 30)
    clock = Clock()
    lock = MoveLock(store, "Cust1", lease=2, wait=1.0, clock=clock, pause=clock.pause)
    with pytest.raises(MoveBusy), lock:
        pass
    assert sum(clock.pauses) == pytest.approx(1.0, abs=0.011)


def test_a_mover_that_died_leaves_the_lock_for_at_most_its_lease(store: StateStore) -> None:
    _taken(store, "Cust1", 0.3)  # taken, never renewed: its holder was killed
    started = time.monotonic()
    with MoveLock(store, "Cust1", lease=0.3, wait=5.0):
        took = time.monotonic() - started
    assert took < 1.0
    assert not store.client.exists(store.lock_key("_move.Cust1"))  # let go at the end


def test_a_live_mover_keeps_the_lock_past_its_lease(store: StateStore) -> None:
    inside, leave = threading.Event(), threading.Event()

    def mover() -> None:
        with MoveLock(store, "Cust1", lease=0.3, wait=1.0):
            inside.set()
            leave.wait(10)

    thread = threading.Thread(target=mover)
    thread.start()
    try:
        assert inside.wait(5)
        # Three leases long, another mover finds it taken all along: it is renewed.
        with pytest.raises(MoveBusy), MoveLock(store, "Cust1", lease=0.3, wait=0.9):
            pass
    finally:
        leave.set()
        thread.join(5)
    with MoveLock(store, "Cust1", lease=0.3, wait=0):
        pass  # free once its mover is done
