"""A resume, on a Redis broker, without workers: the held tasks are released while the
tenant is still paused, so that what is held meanwhile goes behind them; a resume cut
short (its releaser killed) is finished by the next sweep once its lease lapses."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import pytest
from test_redis_release import Tenant, _tenant_of

from celery_tenant_gate.gate import signals

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def gate(gate_app: Any) -> Any:
    from celery_tenant_gate import gate_for

    gate = gate_for(gate_app)
    gate.pause("Cust1", "by the test")
    return gate


@pytest.fixture
def gate_app(redis_url: str, key_prefix: str, superoffice: Any) -> Any:
    import gateapp
    from workers import worker_env

    superoffice.set_state("Cust1", "Running")
    return gateapp.make_app(worker_env(redis_url, redis_url, key_prefix, superoffice))


def _record(gate: Any) -> Any:
    return gate.states.store.get("Cust1")


def test_held_tasks_are_released_before_the_unpause_and_new_holds_go_behind(gate: Any) -> None:
    tenant = _tenant_of(gate)
    for n in range(3):
        tenant.hold(f"old{n}")
    seen: list[tuple[bool, bool]] = []

    def meanwhile(sender: str, **kwargs: Any) -> None:
        record = _record(gate)
        seen.append((record.paused, bool(record.resuming)))
        if len(seen) == 1:  # tasks given during the release: held, as it is paused
            tenant.hold("new0")
            tenant.hold("new1")

    signals.task_released.connect(meanwhile)
    try:
        assert gate.resume("Cust1") == 5
    finally:
        signals.task_released.disconnect(meanwhile)
    assert seen[0] == (True, True)  # released while still paused
    assert tenant.taken() == ["old0", "old1", "old2", "new0", "new1"]
    record = _record(gate)
    assert (record.paused, record.resuming) == (False, 0.0)


def test_a_pause_during_a_resume_stands(gate: Any) -> None:
    tenant = _tenant_of(gate)
    tenant.hold("old0")

    def pause_again(sender: str, **kwargs: Any) -> None:
        gate.pause("Cust1", "again")

    signals.task_released.connect(pause_again)
    try:
        gate.resume("Cust1")
    finally:
        signals.task_released.disconnect(pause_again)
    record = _record(gate)
    assert (record.paused, record.pause_reason, record.resuming) == (True, "again", 0.0)


def _killed_mid_resume(gate: Any, tenant: Tenant, lease: float) -> None:
    """What a resumer killed in the middle of its release leaves: the resume recorded,
    the tenant paused, part of its tasks released, its move lock until its lease ends."""
    for n in range(6):
        tenant.hold(f"old{n}")
    gate.states.store.begin_resume("Cust1", "123.000000654321")
    held = gate.held_queues
    assert held.client.rpoplpush(tenant.queue, tenant.work)  # the first one moved
    assert gate.states.store.try_lock("_move.Cust1", lease) is not None


def test_the_sweep_leaves_a_live_mover_alone_and_takes_over_once_a_dead_ones_lease_lapses(
    gate: Any,
) -> None:
    controls = gate.release.__self__
    controls.config = replace(controls.config, lock_lease=0.3)
    tenant = _tenant_of(gate)
    _killed_mid_resume(gate, tenant, lease=30)  # as long as a live mover renews it
    tenant.hold("new0")  # given after the kill: held, as it is still paused
    assert gate.sweep() == {}  # waited one lease (0.3 s) for it, then left it
    assert _record(gate).paused
    store = gate.states.store
    store.client.delete(store.lock_key("_move.Cust1"))
    assert store.try_lock("_move.Cust1", 0.3) is not None  # its mover died just now
    started = time.monotonic()
    assert gate.sweep() == {"Cust1": "resumed, 6 released"}
    assert time.monotonic() - started < 1.0  # the lease lapsed meanwhile
    assert tenant.taken() == [f"old{n}" for n in range(6)] + ["new0"]
    record = _record(gate)
    assert (record.paused, record.resuming) == (False, 0.0)


def test_a_resume_by_hand_that_was_killed_is_finished_by_the_sweep(gate: Any) -> None:
    # Paused by hand: only a resume by hand ends it; the one recorded counts.
    tenant = _tenant_of(gate)
    _killed_mid_resume(gate, tenant, lease=30)
    gate.states.store.client.delete(gate.states.store.lock_key("_move.Cust1"))  # lapsed
    assert _record(gate).paused_by == "manual"
    assert gate.sweep() == {"Cust1": "resumed, 5 released"}
    assert tenant.taken() == [f"old{n}" for n in range(6)]


def test_a_second_resume_after_a_killed_one_appends_behind_what_it_released(
    gate: Any,
) -> None:
    # The killed resume put old0 in the work queue; a small release would otherwise go
    # before what is queued, ahead of old0.
    tenant = _tenant_of(gate)
    _killed_mid_resume(gate, tenant, lease=30)
    gate.states.store.client.delete(gate.states.store.lock_key("_move.Cust1"))
    controls = gate.release.__self__
    controls.config = replace(controls.config, lock_timeout=1.0)
    assert gate.resume("Cust1") == 5
    assert tenant.taken() == [f"old{n}" for n in range(6)]


def test_a_sweep_that_comes_after_the_resume_it_planned_does_nothing(gate: Any) -> None:
    # The sweep planned a resume of Cust1 (paused by the gate, its state runs), then
    # waited for the move lock while another process resumed it: nothing is left to do,
    # and the tenant is not told resumed twice. Nor is a pause by hand made meanwhile
    # undone by that stale plan.
    gate.pause("Cust1", "held by the gate", by="gate")
    resumed: list[str] = []

    def told(sender: str, **kwargs: Any) -> None:
        resumed.append(sender)

    signals.tenant_resumed.connect(told)
    try:
        gate.resume("Cust1")
        assert gate.release.__self__.finish_resume("Cust1") is None
        assert resumed == ["Cust1"]
        gate.pause("Cust1", "by hand", by="manual")
        assert gate.release.__self__.finish_resume("Cust1") is None
        assert _record(gate).paused and _record(gate).paused_by == "manual"
    finally:
        signals.tenant_resumed.disconnect(told)
