"""The store losing its data (restarted empty, flushed, failed over): noticed by the
epoch, and repaired from what the workers remember (gate/storeloss.py,
io/store/epoch.py). Each decision with an injected clock; nothing sleeps."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest
import redis

from bench.faults.store_restart import EVENT
from celery_tenant_gate.config.settings import GateConfig
from celery_tenant_gate.gate import signals
from celery_tenant_gate.gate.lookup import TenantStates
from celery_tenant_gate.gate.storeloss import FOUND_HELD, RESTORED, Step, StoreGuard, decide
from celery_tenant_gate.io.broker.redis_held import RedisHeldQueues
from celery_tenant_gate.io.store.epoch import Epoch
from celery_tenant_gate.model.verdicts import Verdict
from celery_tenant_gate.testing import FakeSuperOffice

MANUAL, BY_STATE, RUNNING, STRAY = "Cust501", "Cust502", "Cust503", "Cust504"


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class BrokerQueues:
    """Tenant queues of a broker that lists them (as the Redis broker does)."""

    def __init__(self, *tenants: str) -> None:
        self.holding = list(tenants)

    def tenants(self) -> list[str]:
        return list(self.holding)


def wipe(client: redis.Redis, prefix: str) -> None:
    """What a restart without persistence does to the store (to this test's keys)."""
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def other_states(config: GateConfig) -> Iterator[TenantStates]:
    """A second process's look-up (a pool process, or another worker)."""
    instance = TenantStates.from_config(config)
    yield instance
    instance.close()


def guard_for(states: TenantStates, clock: Clock, *holding: str) -> StoreGuard:
    guard = StoreGuard(states, BrokerQueues(*holding), patience=30.0, clock=clock)
    states.store_guard = guard
    # One clock for the guard and the look-ups: a stand-in's second is the same second.
    states._clock = clock
    return guard


def paused_by(states: TenantStates, ctx: str) -> tuple[bool, str, str]:
    record = states.store.get(ctx)
    assert record is not None, f"{ctx} has no record"
    return record.paused, record.paused_by, record.pause_reason


# -- the decision, pure ---------------------------------------------------------------

RESTORED_X = Epoch("x", restored=True)


@pytest.mark.parametrize(
    ("remembered", "found", "mirror", "lost_since", "step"),
    [
        ("a", Epoch("a"), True, None, Step.SAME),
        (None, Epoch("a"), False, None, Step.ADOPT),
        (None, None, False, None, Step.CLAIM),
        ("a", None, True, None, Step.RESTORE),
        ("a", Epoch("x"), True, None, Step.RESTORE),  # a new epoch: lost all the same
        ("a", RESTORED_X, True, None, Step.RESTORE),  # restored by another: add ours
        ("a", RESTORED_X, False, None, Step.FOLLOW),
        ("a", None, False, None, Step.WAIT),
        ("a", Epoch("x"), False, 1000.0, Step.WAIT),  # claimed, not restored: wait
        ("a", None, False, 1000.0 - 29.9, Step.WAIT),
        ("a", None, False, 1000.0 - 30.0, Step.RESTORE),  # waited long enough
    ],
)
def test_the_decision_on_the_epoch(
    remembered: str | None, found: Epoch | None, mirror: bool, lost_since: float | None, step: Step
) -> None:
    got = decide(
        remembered, found, keeps_mirror=mirror, lost_since=lost_since, now=1000.0, patience=30.0
    )
    assert got is step


# -- a worker that keeps a mirror restores --------------------------------------------


def test_a_worker_restores_pauses_and_held_index_before_a_tenant_can_run(
    states: TenantStates,
    superoffice: FakeSuperOffice,
    redis_client: redis.Redis,
    key_prefix: str,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for ctx in (MANUAL, BY_STATE, RUNNING):
        superoffice.set_state(ctx, "Running")
    guard = guard_for(states, clock, MANUAL, BY_STATE, STRAY)
    states.set_paused(MANUAL, True, reason="by hand", by="manual")
    states.set_paused(BY_STATE, True, reason="state Suspended", by="gate")
    states.store.mark_held(MANUAL, clock.now - 5)
    states.store.mark_held(BY_STATE, clock.now - 5)
    guard.tick()  # the sweeper's: claims the epoch, then takes the mirror
    assert guard.mirror is not None and set(guard.mirror.paused) == {MANUAL, BY_STATE}
    told: list[dict[str, object]] = []

    def receiver(**kwargs: object) -> None:
        told.append(kwargs)

    signals.store_lost.connect(receiver, weak=False)
    try:
        wipe(redis_client, key_prefix)
        with caplog.at_level(logging.ERROR):
            # MANUAL's state is Running: without the check it would run now.
            assert states.verdict(MANUAL) is Verdict.HOLD
    finally:
        signals.store_lost.disconnect(receiver)

    assert paused_by(states, MANUAL) == (True, "manual", f"by hand ({RESTORED})")
    assert paused_by(states, BY_STATE)[:2] == (True, "gate")
    # A tenant holding work in the broker that the mirror did not know: paused by hand.
    assert paused_by(states, STRAY) == (True, "manual", FOUND_HELD)
    assert set(states.store.held_tenants()) == {MANUAL, BY_STATE, STRAY}
    assert states.store.held_tenants()[MANUAL] == clock.now - 5
    assert guard.losses == 1 and len(told) == 1 and told[0]["epoch"] == "none"
    assert any(EVENT.search(r.getMessage()) for r in caplog.records if r.levelname == "ERROR")
    found = guard.epochs.read()
    assert found is not None and found.restored and guard.remembered == found.id
    # Tenants not paused are asked again from the State API (their records are gone).
    assert states.verdict(RUNNING) is Verdict.RUN
    assert superoffice.calls(RUNNING) == 1
    # Settled: the next checks find the same store.
    assert guard.check() is Step.SAME and guard.losses == 1


def test_a_restore_keeps_decisions_taken_after_the_loss(
    states: TenantStates, redis_client: redis.Redis, key_prefix: str, clock: Clock
) -> None:
    guard = guard_for(states, clock)
    states.set_paused(MANUAL, True, reason="by hand", by="manual")
    states.set_paused(BY_STATE, True, reason="held", by="manual")
    guard.tick()
    wipe(redis_client, key_prefix)
    states.set_paused(MANUAL, True, reason="state Suspended", by="gate")  # by the gate
    states.set_paused(BY_STATE, False)  # resumed by hand since
    assert guard.check() is Step.RESTORE
    assert paused_by(states, MANUAL)[:2] == (True, "manual")  # by hand outranks the gate
    assert paused_by(states, BY_STATE)[0] is False


def test_a_flushed_store_is_noticed_at_the_sweeper_tick(
    states: TenantStates, redis_client: redis.Redis, key_prefix: str, clock: Clock
) -> None:
    guard = guard_for(states, clock)
    states.set_paused(MANUAL, True, reason="by hand", by="manual")
    guard.tick()
    wipe(redis_client, key_prefix)
    guard.tick()  # no look-up, no reconnection: the tick alone
    assert guard.losses == 1 and paused_by(states, MANUAL)[:2] == (True, "manual")
    assert guard.mirror is not None and set(guard.mirror.paused) == {MANUAL}


# -- a process without a mirror waits for one that has it ------------------------------


def test_a_process_without_a_mirror_holds_until_a_worker_restored(
    states: TenantStates,
    other_states: TenantStates,
    superoffice: FakeSuperOffice,
    redis_client: redis.Redis,
    key_prefix: str,
    clock: Clock,
) -> None:
    superoffice.set_state(MANUAL, "Running")
    superoffice.set_state(RUNNING, "Running")
    worker = guard_for(states, clock)
    pool = guard_for(other_states, clock)  # knows the epoch, keeps no mirror
    states.set_paused(MANUAL, True, reason="by hand", by="manual")
    worker.tick()
    assert pool.check() is Step.ADOPT
    wipe(redis_client, key_prefix)

    assert other_states.verdict(MANUAL, wait=False) is Verdict.HOLD
    assert states.store.get(MANUAL) is None  # nothing written meanwhile
    assert superoffice.calls(MANUAL) == 0  # and nobody asked
    assert pool.losses == 1 and pool.check() is Step.WAIT and pool.losses == 1

    assert worker.check() is Step.RESTORE
    clock.now += 2  # past the stand-in's second
    assert other_states.verdict(MANUAL, wait=False) is Verdict.HOLD
    assert paused_by(other_states, MANUAL)[:2] == (True, "manual")
    # Its next tenant without a record: the store was restored, it follows.
    assert other_states.verdict(RUNNING) is Verdict.RUN
    assert pool.remembered == worker.remembered and pool.lost_since is None


def test_a_process_without_a_mirror_restores_what_it_can_after_its_patience(
    states: TenantStates, redis_client: redis.Redis, key_prefix: str, clock: Clock
) -> None:
    guard = guard_for(states, clock, STRAY)
    assert guard.check() is Step.CLAIM
    wipe(redis_client, key_prefix)
    assert guard.check() is Step.WAIT
    clock.now += 29.9
    assert guard.check() is Step.WAIT
    clock.now += 0.1
    assert guard.check() is Step.RESTORE
    assert paused_by(states, STRAY) == (True, "manual", FOUND_HELD)
    assert set(states.store.held_tenants()) == {STRAY}


# -- the listener's reconnection ----------------------------------------------------


def test_a_store_restarted_empty_is_restored_when_the_listener_resubscribes(
    config: GateConfig, superoffice: FakeSuperOffice
) -> None:
    from dataclasses import replace

    from bench.faults.procs import StoreRedis

    superoffice.set_state(RUNNING, "Running")
    store = StoreRedis().start()
    lost = threading.Event()

    def receiver(**_: object) -> None:
        lost.set()

    signals.store_lost.connect(receiver, weak=False)
    states = TenantStates.from_config(replace(config, redis_url=store.url))
    try:
        guard = guard_for(states, Clock())
        states.set_paused(MANUAL, True, reason="by hand", by="manual")
        guard.tick()
        assert states.verdict(RUNNING) is Verdict.RUN  # starts the listener
        assert states.watch.listener is not None and states.watch.listener.subscribed.wait(10)
        store.down(keep_data=False)
        store.up()
        assert lost.wait(15), "the loss was not noticed on resubscribing"
        assert states.watch.listener.subscribed.wait(10)
        assert paused_by(states, MANUAL)[:2] == (True, "manual")
    finally:
        signals.store_lost.disconnect(receiver)
        states.close()
        store.stop()


# -- the Redis broker names the tenants holding work --------------------------------


def test_the_redis_broker_lists_the_tenant_queues_that_hold_messages(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    held = RedisHeldQueues(redis_client, queue_template=f"{key_prefix}:t[1].{{ctx}}")
    redis_client.lpush(f"{key_prefix}:t[1].Cust1", b"m")
    redis_client.lpush(f"{key_prefix}:t[1].Cust2\x06\x163", b"m")  # a priority list
    redis_client.lpush(f"{key_prefix}:t1.Cust3", b"m")  # another template's
    redis_client.lpush(f"{key_prefix}:work", b"m")
    assert held.tenants() == ["Cust1", "Cust2"]
