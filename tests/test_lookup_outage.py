"""Knowing a tenant's state while a dependency is slow or gone: the consumer's look-ups
(``wait=False``) never wait on the State API, nor on a store known to be down.

Against real Redis servers (a throw-away one for the outages) and the local
SuperOffice stand-in.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from workers import wait_until

from bench.faults.procs import StoreRedis
from celery_tenant_gate.config.settings import GateConfig
from celery_tenant_gate.gate.lookup import TenantStates
from celery_tenant_gate.io.store.cache import LocalCache
from celery_tenant_gate.io.store.health import StoreHealth
from celery_tenant_gate.model.verdicts import Verdict
from celery_tenant_gate.testing import FakeSuperOffice


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


# -- the State API slow or never asked yet -------------------------------------------


def test_a_tenant_never_seen_is_held_at_once_and_asked_in_the_background(
    states: TenantStates, superoffice: FakeSuperOffice
) -> None:
    runnable: list[str] = []
    told = threading.Event()
    states.on_runnable.append(lambda ctx: (runnable.append(ctx), told.set()))
    superoffice.set_state("Cust9", "Running", delay=2.0)

    assert states.verdict("Cust9", wait=False) is Verdict.HOLD
    # Returned before the State API answered: nothing is stored yet.
    assert states.store.get("Cust9") is None
    assert states.verdict("Cust9", wait=False) is Verdict.HOLD  # and asked once only

    assert told.wait(10), "never told that Cust9 runs"
    assert runnable == ["Cust9"]
    assert states.verdict("Cust9", wait=False) is Verdict.RUN
    assert superoffice.calls("Cust9") == 1


def test_a_cached_tenant_is_not_delayed_by_another_tenants_slow_answer(
    states: TenantStates, superoffice: FakeSuperOffice
) -> None:
    superoffice.set_state("Cust1", "Running")
    assert states.verdict("Cust1") is Verdict.RUN
    superoffice.set_state("Cust2", "Running", delay=3.0)
    assert states.verdict("Cust2", wait=False) is Verdict.HOLD
    for _ in range(1000):  # while Cust2's answer is on its way
        assert states.verdict("Cust1", wait=False) is Verdict.RUN
    assert states.store.get("Cust2") is None, "the look-ups above waited for Cust2's answer"


def test_a_tenant_that_stays_held_is_not_told_as_runnable(
    states: TenantStates, superoffice: FakeSuperOffice
) -> None:
    runnable: list[str] = []
    states.on_runnable.append(runnable.append)
    superoffice.set_state("Cust3", "Suspended")
    assert states.verdict("Cust3", wait=False) is Verdict.HOLD
    wait_until(lambda: states.store.get("Cust3") is not None, what="the background answer")
    assert states.verdict("Cust3", wait=False) is Verdict.HOLD
    assert runnable == []


# -- the store down -------------------------------------------------------------------


@pytest.fixture
def store() -> Iterator[StoreRedis]:
    server = StoreRedis().start()
    try:
        yield server
    finally:
        server.stop()


def _on(store: StoreRedis, config: GateConfig, clock: Clock, grace: float) -> TenantStates:
    config = replace(config, redis_url=store.url, store_outage_grace=grace)
    states = TenantStates.from_config(config)
    states._clock = clock
    states.health._clock = clock
    return states


def test_with_the_store_down_known_tenants_are_decided_without_waiting_for_a_bounded_time(
    store: StoreRedis, config: GateConfig, superoffice: FakeSuperOffice, caplog: Any
) -> None:
    clock = Clock()
    states = _on(store, config, clock, grace=60.0)
    try:
        superoffice.set_state("Cust1", "Running")
        superoffice.set_state("Cust2", "Running")
        superoffice.set_state("Cust3", "Running")
        assert states.verdict("Cust1") is Verdict.RUN
        assert states.verdict("Cust2") is Verdict.RUN
        states.set_paused("Cust2", True, reason="by hand")
        assert states.verdict("Cust2") is Verdict.HOLD
        listener = states.watch.listener
        assert listener is not None and listener.subscribed.wait(5)

        with caplog.at_level(logging.WARNING, logger="celery_tenant_gate"):
            store.down(keep_data=True)
            wait_until(lambda: states.health.down, what="the store seen down")
            for _ in range(100):
                assert states.verdict("Cust1", wait=False) is Verdict.RUN  # last seen running
                assert states.verdict("Cust2", wait=False) is Verdict.HOLD  # paused stays so
                assert states.verdict("Cust3", wait=False) is Verdict.HOLD  # never seen: waits
        told = [r.getMessage() for r in caplog.records]
        assert sum(f":{store.port}/0 cannot be reached" in m for m in told) == 1, told
        assert superoffice.calls("Cust3") == 0  # nothing to store an answer in

        clock.now += 61  # longer than tenant_gate_store_outage_grace
        assert states.verdict("Cust1", wait=False) is Verdict.HOLD

        store.up()
        wait_until(lambda: not states.health.down, timeout=10, what="the store seen back")
        assert states.verdict("Cust1", wait=False) is Verdict.RUN
        assert states.verdict("Cust2", wait=False) is Verdict.HOLD
    finally:
        states.close()


def test_the_store_down_costs_the_consumer_one_failed_call_not_one_per_task(
    store: StoreRedis, config: GateConfig, superoffice: FakeSuperOffice
) -> None:
    clock = Clock()
    states = _on(store, config, clock, grace=60.0)
    try:
        superoffice.set_state("Cust1", "Running")
        assert states.verdict("Cust1") is Verdict.RUN
        states.cache.reset(enabled=False)  # nothing cached: every look-up reads the store
        calls = 0
        read = states.store.get

        def counted(ctx: str) -> object:
            nonlocal calls
            calls += 1
            return read(ctx)

        states.store.get = counted  # type: ignore[method-assign]
        store.down(keep_data=True)
        for _ in range(200):
            assert states.verdict("Cust1", wait=False) is Verdict.RUN
        assert calls <= 1
    finally:
        states.close()


# -- the pieces -----------------------------------------------------------------------


def test_health_pings_until_the_store_answers_then_tells_once() -> None:
    answers = [ConnectionError("refused")] * 3 + [None]
    recovered = threading.Event()
    pings = 0

    def ping() -> None:
        nonlocal pings
        pings += 1
        answer = answers[min(pings - 1, len(answers) - 1)]
        if answer is not None:
            raise answer

    health = StoreHealth(ping, on_recovered=recovered.set, first_delay=0.001, max_delay=0.004)
    clock = Clock()
    health._clock = clock
    health.failed("refused")
    health.failed("refused again")  # one outage
    assert health.down and health.outages == 1
    clock.now += 7
    assert health.outage_lasted() == pytest.approx(7)
    assert recovered.wait(5)
    assert not health.down and pings == 4 and health.outage_lasted() == 0


def test_a_suspended_cache_keeps_what_it_has_for_a_bounded_time_and_stores_nothing() -> None:
    cache: LocalCache[str] = LocalCache()
    cache.reset(enabled=True)
    assert cache.put("Cust1", cache.token("Cust1"), 1000.0, "run")
    assert cache.put("Cust2", cache.token("Cust2"), 50.0, "hold")
    token = cache.token("Cust3")
    cache.suspend(until=100.0)
    assert cache.entries == {"Cust1": (100.0, "run"), "Cust2": (50.0, "hold")}
    assert not cache.put("Cust3", token, 1000.0, "run")  # read before: may be stale
    assert not cache.put("Cust3", cache.token("Cust3"), 1000.0, "run")  # nothing new
    cache.reset(enabled=True)
    assert cache.entries == {}
