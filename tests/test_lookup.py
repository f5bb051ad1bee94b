"""Knowing a tenant's state: cache, shared store, State API, failure policy.

Against a real Redis and the local SuperOffice stand-in; several tests use real
separate processes, as workers on several machines would be.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from dataclasses import replace
from typing import Any

import pytest
import redis
from workers import wait_until

from celery_tenant_gate.config.settings import GateConfig
from celery_tenant_gate.gate.lookup import TenantStates
from celery_tenant_gate.io.store.state_store import StateStore, connect
from celery_tenant_gate.model.record import Source
from celery_tenant_gate.model.states import State, TenantState
from celery_tenant_gate.model.verdicts import Verdict
from celery_tenant_gate.testing import FakeSuperOffice, Reply

SPAWN = multiprocessing.get_context("spawn")


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _states(config: GateConfig, clock: Clock | None = None, **overrides: Any) -> TenantStates:
    config = replace(config, **overrides)
    states = TenantStates.from_config(config)
    if clock is not None:
        states._clock = clock
    return states


def test_a_cold_tenant_is_asked_once_then_served_from_memory(
    states: TenantStates, superoffice: FakeSuperOffice
) -> None:
    superoffice.set_state("Cust1", "Running", valid_for=60)
    assert states.verdict("Cust1") is Verdict.RUN
    for _ in range(1000):
        assert states.may_run("Cust1")
    assert superoffice.calls("Cust1") == 1
    record = states.record("Cust1")
    assert record is not None and record.source is Source.PULL
    assert record.state is not None and record.state.api.endswith("/Cust1/api")


@pytest.mark.parametrize(
    ("state", "verdict"),
    [
        ("Running", Verdict.RUN),
        ("OnlineMaintenance", Verdict.RUN),
        ("OfflineMaintenance", Verdict.HOLD),
        ("Suspended", Verdict.HOLD),
        ("Deleted", Verdict.DROP),
        ("Deleting", Verdict.DROP),
        (7, Verdict.HOLD),
        ("SomethingNew", Verdict.HOLD),
    ],
)
def test_verdict_follows_the_state(
    states: TenantStates, superoffice: FakeSuperOffice, state: str | int, verdict: Verdict
) -> None:
    superoffice.set_state("Cust1", state)
    assert states.verdict("Cust1") is verdict


def test_the_answer_expires_at_valid_until_then_the_api_is_asked_again(
    config: GateConfig, superoffice: FakeSuperOffice
) -> None:
    clock = Clock()
    states = _states(config, clock, min_ttl=5.0, max_ttl=900.0)
    try:
        superoffice.set_state("Cust1", "Running", valid_for=120)
        assert states.may_run("Cust1")
        clock.now += 100
        assert states.may_run("Cust1")
        assert superoffice.calls("Cust1") == 1
        superoffice.set_state("Cust1", "OfflineMaintenance", valid_for=120)
        clock.now += 21
        assert states.verdict("Cust1") is Verdict.HOLD
        assert superoffice.calls("Cust1") == 2
    finally:
        states.close()


def test_without_waiting_a_due_answer_is_used_while_the_api_is_asked_in_the_background(
    config: GateConfig, superoffice: FakeSuperOffice
) -> None:
    # The worker's consumer asks with wait=False: a slow State API must not stall it.
    clock = Clock()
    states = _states(config, clock, min_ttl=5.0, max_ttl=900.0)
    try:
        superoffice.set_state("Cust1", "Running", valid_for=60)
        assert states.verdict("Cust1") is Verdict.RUN  # never seen: asked, waiting
        superoffice.set_state("Cust1", "Suspended", valid_for=60, delay=3.0)
        clock.now += 61  # due now, well within the grace period

        # Answered from the stored record, without waiting 3 s for the State API
        # (a call that waited would have returned the new answer: HOLD).
        assert states.verdict("Cust1", wait=False) is Verdict.RUN
        wait_until(lambda: superoffice.calls("Cust1") == 2, what="the background call")
        assert states.verdict("Cust1", wait=False) is Verdict.RUN  # one call at a time
        # Once stored, the new answer replaces the old one in the cache.
        wait_until(
            lambda: states.verdict("Cust1", wait=False) is Verdict.HOLD, what="the new answer"
        )
        assert superoffice.calls("Cust1") == 2
    finally:
        states.close()


@pytest.mark.parametrize(("valid_for", "trusted_for"), [(3600, 900), (1, 5), (-60, 5), (30, 30)])
def test_valid_until_is_clamped(
    config: GateConfig, superoffice: FakeSuperOffice, valid_for: float, trusted_for: float
) -> None:
    clock = Clock()
    states = _states(config, clock, min_ttl=5.0, max_ttl=900.0)
    try:
        superoffice.set_state("Cust1", "Running", valid_for=valid_for)
        record = states.record("Cust1")
        assert record is not None
        assert record.fresh_until - record.learnt_at == pytest.approx(trusted_for, abs=1.0)
    finally:
        states.close()


def test_a_failing_api_without_known_state_holds_and_is_not_hammered(
    states: TenantStates, superoffice: FakeSuperOffice
) -> None:
    superoffice.set_state("Cust1")
    superoffice.script("Cust1", *[Reply(status=503)] * 5)
    for _ in range(50):
        assert states.verdict("Cust1") is Verdict.HOLD
    assert superoffice.calls("Cust1") == 1  # next try after tenant_gate_error_retry_interval
    record = states.record("Cust1")
    assert record is not None and "HTTP 503" in record.error


def test_failure_policy_run(config: GateConfig, superoffice: FakeSuperOffice) -> None:
    states = _states(config, failure_policy=Verdict.RUN)
    try:
        superoffice.script("Cust1", Reply(status=500))
        assert states.verdict("Cust1") is Verdict.RUN
    finally:
        states.close()


@pytest.mark.parametrize(
    "fault",
    [
        Reply(status=500),
        Reply(body=b"not json"),
        Reply(body=b'{"ContextIdentifier": "Cust2"}'),
        Reply(status=404),
        Reply(status=401),
    ],
)
def test_last_known_state_is_used_during_the_grace_period_then_the_policy(
    config: GateConfig, superoffice: FakeSuperOffice, fault: Reply
) -> None:
    clock = Clock()
    states = _states(
        config,
        clock,
        min_ttl=5.0,
        grace_period=60.0,
        error_retry_interval=10.0,
        circuit_failure_threshold=0,
    )
    try:
        superoffice.set_state("Cust1", "Running", valid_for=30)
        assert states.may_run("Cust1")
        superoffice.script("Cust1", *[fault] * 20)
        clock.now += 31  # stale: asked again, fails, last known state still good
        assert states.verdict("Cust1") is Verdict.RUN
        for step in range(6):
            clock.now += 10
            expected = Verdict.RUN if 31 + 10 * (step + 1) <= 30 + 60 else Verdict.HOLD
            assert states.verdict("Cust1") is expected, step
        assert superoffice.calls("Cust1") == 8  # the first answer, then one per retry interval
    finally:
        states.close()


def test_a_slow_pull_does_not_undo_a_newer_push(
    states: TenantStates, superoffice: FakeSuperOffice
) -> None:
    superoffice.set_state("Cust1", "Running", delay=0.5)
    puller = threading.Thread(target=states.refresh, args=("Cust1",))
    puller.start()
    deadline = time.monotonic() + 5
    while superoffice.calls("Cust1") == 0 and time.monotonic() < deadline:
        states.cache.wait_for_change(0.01)  # until the request is in flight
    states.learn(TenantState("Cust1", State.SUSPENDED, "Suspended"), source=Source.PUSH)
    puller.join(5)
    record = states.record("Cust1")
    assert record is not None and record.state is not None
    assert record.state.state is State.SUSPENDED and record.source is Source.PUSH
    assert states.verdict("Cust1") is Verdict.HOLD


def test_pause_holds_a_running_tenant_everywhere(
    config: GateConfig, states: TenantStates, superoffice: FakeSuperOffice
) -> None:
    superoffice.set_state("Cust1", "Running")
    other = _states(config)
    try:
        assert other.may_run("Cust1") and states.may_run("Cust1")
        assert states.set_paused("Cust1", True, reason="by hand")
        _wait_for(lambda: other.verdict("Cust1") is Verdict.HOLD, other)
        assert states.set_paused("Cust1", False)
        _wait_for(lambda: other.verdict("Cust1") is Verdict.RUN, other)
        assert superoffice.calls("Cust1") == 1
    finally:
        other.close()


def test_redis_down_never_raises(config: GateConfig, superoffice: FakeSuperOffice) -> None:
    superoffice.set_state("Cust1", "Running")
    states = _states(config)
    try:
        assert states.may_run("Cust1")
        states.store = StateStore(connect("redis://127.0.0.1:1/0"), config.key_prefix)
        states.cache.reset(enabled=False)  # as the listener does when Redis goes
        assert states.verdict("Cust1") is Verdict.RUN  # what this process last saw
        assert states.verdict("Cust2") is Verdict.HOLD  # nothing known: the failure policy
    finally:
        states.close()


def test_a_crashed_lock_holder_delays_others_only_until_its_lock_expires(
    config: GateConfig, superoffice: FakeSuperOffice
) -> None:
    superoffice.set_state("Cust1", "Running")
    states = _states(config, lock_timeout=0.5)
    try:
        assert states.store.try_lock("Cust1", 0.5) is not None  # and never released
        started = time.monotonic()
        assert states.may_run("Cust1")
        assert time.monotonic() - started < 3
        assert superoffice.calls("Cust1") == 1
    finally:
        states.close()


def test_the_cache_survives_a_lost_change_connection(
    config: GateConfig,
    states: TenantStates,
    redis_client: redis.Redis,
    superoffice: FakeSuperOffice,
) -> None:
    superoffice.set_state("Cust1", "Running")
    assert states.may_run("Cust1")
    listener = states.watch.listener
    assert listener is not None and listener.subscribed.wait(5)
    redis_client.client_kill_filter(_type="pubsub")
    # Whatever changed while it was away is read from Redis, and new changes arrive.
    writer = _states(config)
    try:
        writer.set_paused("Cust1", True, reason="while disconnected")
        _wait_for(lambda: states.verdict("Cust1") is Verdict.HOLD, states)
        assert listener.subscribed.wait(5)
        writer.set_paused("Cust1", False)
        _wait_for(lambda: states.verdict("Cust1") is Verdict.RUN, states)
    finally:
        writer.close()


def _wait_for(condition: Any, states: TenantStates, timeout: float = 5.0) -> None:
    """Re-check *condition* each time *states* hears of a change, for *timeout* at most."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        states.cache.wait_for_change(0.05)


# -- several processes ----------------------------------------------------------------


def _ask_at_once(config: GateConfig, barrier: Any, results: Any) -> None:
    states = TenantStates.from_config(config)
    barrier.wait(30)
    results.put(states.verdict("Cust7").value)
    states.close()


@pytest.mark.slow
def test_eight_processes_asking_for_a_cold_tenant_make_one_call(
    config: GateConfig, superoffice: FakeSuperOffice
) -> None:
    superoffice.set_state("Cust7", "Running", delay=0.5)
    barrier = SPAWN.Barrier(8)
    results = SPAWN.Queue()
    procs = [SPAWN.Process(target=_ask_at_once, args=(config, barrier, results)) for _ in range(8)]
    for proc in procs:
        proc.start()
    verdicts = [results.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(30)
    assert verdicts == ["run"] * 8
    assert superoffice.calls("Cust7") == 1


def _watch(config: GateConfig, ready: Any, results: Any) -> None:
    states = TenantStates.from_config(config)
    assert states.may_run("Cust8")
    listener = states.watch.listener
    assert listener is not None and listener.subscribed.wait(10)
    assert states.may_run("Cust8")  # now served from this process's memory
    ready.set()
    deadline = time.monotonic() + 10
    while states.may_run("Cust8") and time.monotonic() < deadline:
        pass  # the hot path, as a busy worker would call it
    results.put(time.time())
    states.close()


@pytest.mark.slow
def test_a_change_in_one_process_reaches_another_process_cache_within_50ms(
    config: GateConfig, superoffice: FakeSuperOffice
) -> None:
    superoffice.set_state("Cust8", "Running", valid_for=3600)
    ready = SPAWN.Event()
    results = SPAWN.Queue()
    watcher = SPAWN.Process(target=_watch, args=(config, ready, results))
    watcher.start()
    assert ready.wait(60)
    states = TenantStates.from_config(config)
    try:
        written_at = time.time()
        states.learn(TenantState("Cust8", State.OFFLINE_MAINTENANCE, "6"), source=Source.PUSH)
        seen_at = results.get(timeout=15)
    finally:
        states.close()
        watcher.join(10)
    assert seen_at - written_at < 0.050
    assert superoffice.calls("Cust8") == 1
