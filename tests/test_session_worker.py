"""The tenant session in a real worker (subprocess) against a real local tenant API
host and State API: a task making 100 calls meets its tenant paused, moved, deleted
or rate-limited in the middle."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import gateapp
import pytest
import redis
from workers import Harness, wait_until, worker_env

from celery_tenant_gate import gate_for
from celery_tenant_gate.gate.gate import Gate
from celery_tenant_gate.testing import FakeSuperOffice, FakeTenantApi, Reply
from celery_tenant_gate.worker.control import apply_notification

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture(params=["redis", "amqp"])
def broker(request: pytest.FixtureRequest, redis_url: str) -> str:
    if request.param == "amqp":
        return str(request.getfixturevalue("amqp_url"))
    return redis_url


@pytest.fixture
def env(
    broker: str, redis_url: str, key_prefix: str, superoffice: FakeSuperOffice
) -> dict[str, str]:
    return {**worker_env(broker, redis_url, key_prefix, superoffice), "GATE_RECORD_SIGNALS": "1"}


@pytest.fixture
def host() -> Iterator[FakeTenantApi]:
    with FakeTenantApi() as fake:
        yield fake


def _gate(env: dict[str, str], *tenants: str) -> tuple[Any, Gate]:
    """The test's app and gate, the *tenants* known to the store (as after their
    first task: a tenant never seen is held until its state is known)."""
    app = gateapp.make_app(env)
    gate = gate_for(app)
    for ctx in tenants:
        gate.states.refresh(ctx)
    return app, gate


def _held(gate: Gate, ctx: str, count: int) -> None:
    wait_until(lambda: gate.state(ctx, look_up=False).held == count, what=f"{count} held")


def test_paused_after_the_40th_call_the_task_is_held_and_runs_again_after_resume(
    env: dict[str, str], harness: Harness, superoffice: FakeSuperOffice, host: FakeTenantApi
) -> None:
    superoffice.set_state("Cust1", "Running", endpoint=host.base_url)
    app, gate = _gate(env, "Cust1", "Cust2")

    def upgrade() -> None:  # the State API and the webhook both say so
        superoffice.set_state("Cust1", "OfflineMaintenance", endpoint=host.base_url)
        apply_notification(gate, change_type=0, context_id="Cust1")  # Upgrade

    host.at("Cust1", 40, upgrade)
    harness.worker("solo")
    sent = app.tasks["gateapp.calls"].apply_async(("Cust1", 100))

    _held(gate, "Cust1", 1)
    assert host.requests("Cust1") == 40  # 41 and later were not sent
    (held,) = gate.held("Cust1", 10)
    assert held.task_id == sent.id
    assert harness.ran_now() == []

    superoffice.set_state("Cust1", "Running", endpoint=host.base_url)  # upgraded
    (ran,) = harness.wait_ran(1)
    assert (ran["id"], ran["n"], ran["retries"]) == (sent.id, 100, 0)  # no retry counted
    assert ran["held"] == 1
    assert host.requests("Cust1") == 140  # from the start again: 40 + 100


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_a_task_that_is_not_bound_is_held_the_same(
    env: dict[str, str], harness: Harness, superoffice: FakeSuperOffice, host: FakeTenantApi
) -> None:
    superoffice.set_state("Cust1", "Running", endpoint=host.base_url)
    app, gate = _gate(env, "Cust1")

    def suspend() -> None:
        superoffice.set_state("Cust1", "Suspended", endpoint=host.base_url)
        apply_notification(gate, change_type=2, context_id="Cust1")  # Suspend

    host.at("Cust1", 10, suspend)
    harness.worker("solo")
    sent = app.tasks["gateapp.unbound_calls"].apply_async(("Cust1", 30))
    _held(gate, "Cust1", 1)
    assert host.requests("Cust1") == 10
    (held,) = gate.held("Cust1", 10)
    assert held.task_id == sent.id
    superoffice.set_state("Cust1", "Running", endpoint=host.base_url)
    (ran,) = harness.wait_ran(1)
    assert (ran["kind"], ran["n"]) == ("unbound_calls", 30)


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_moved_after_the_40th_call_the_task_completes_on_the_new_host(
    env: dict[str, str], harness: Harness, superoffice: FakeSuperOffice, host: FakeTenantApi
) -> None:
    superoffice.set_state("Cust1", "Running", endpoint=host.base_url)
    app, gate = _gate(env, "Cust1", "Cust2")
    with FakeTenantApi() as new:

        def move() -> None:
            superoffice.set_state("Cust1", "Running", endpoint=new.base_url)
            host.misdirect("Cust1")  # the old server answers 421 from now on

        host.at("Cust1", 41, move)
        harness.worker("solo")
        sent = app.tasks["gateapp.calls"].apply_async(("Cust1", 100))
        (ran,) = harness.wait_ran(1)
        assert (ran["id"], ran["retries"], ran["held"]) == (sent.id, 0, None)
        assert [s.status for s in host.seen("Cust1")] == [200] * 40 + [421]
        assert [s.path for s in new.seen("Cust1")] == [f"v1/Contact/{i}" for i in range(41, 101)]
        record = gate.states.store.get("Cust1")  # every worker learns the new Api
        assert record is not None and record.state is not None
        assert record.state.api == new.api("Cust1")


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_deleted_mid_task_the_task_is_dropped_dead_lettered_and_told(
    env: dict[str, str],
    harness: Harness,
    superoffice: FakeSuperOffice,
    host: FakeTenantApi,
    redis_client: redis.Redis,
) -> None:
    superoffice.set_state("Cust1", "Running", endpoint=host.base_url)
    app, gate = _gate(env, "Cust1", "Cust2")

    def delete() -> None:
        superoffice.set_state("Cust1", "Deleted", endpoint=host.base_url)
        gate.states.refresh("Cust1")

    host.at("Cust1", 40, delete)
    harness.worker("solo")
    sent = app.tasks["gateapp.calls"].apply_async(("Cust1", 100))
    wait_until(lambda: gate.dead.count("Cust1") == 1, what="1 dead letter")
    (letter,) = gate.dead.list("Cust1")
    assert letter.task_id == sent.id and "Deleted" in letter.reason
    assert host.requests("Cust1") == 40
    signals = [json.loads(s) for s in redis_client.lrange(f"{env['GATE_PREFIX']}:signals", 0, -1)]
    dropped = [s for s in signals if s["signal"] == "task_dropped"]
    assert [(s["context_id"], s["task_id"]) for s in dropped] == [("Cust1", sent.id)]
    assert harness.ran_now() == []
    assert gate.state("Cust1", look_up=False).held == 0


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_429_pauses_the_tenant_for_its_retry_after_and_no_slot_sleeps(
    env: dict[str, str], harness: Harness, superoffice: FakeSuperOffice, host: FakeTenantApi
) -> None:
    superoffice.set_state("Cust1", "Running", endpoint=host.base_url)
    superoffice.set_state("Cust2", "Running", endpoint=host.base_url)
    app, gate = _gate(env, "Cust1", "Cust2")
    too_many = Reply(status=429, headers={"Retry-After": "5"})
    host.at("Cust1", 20, lambda: host.script("Cust1", too_many))
    harness.worker("solo")  # one slot each: a sleeping one would block the rest
    harness.worker("solo")
    calls = app.tasks["gateapp.calls"]
    first = calls.apply_async(("Cust1", 100))
    _held(gate, "Cust1", 1)
    second = calls.apply_async(("Cust1", 5))  # waits in the tenant's queue
    others = [calls.apply_async(("Cust2", 10)) for _ in range(2)]

    ran = harness.wait_ran(4, timeout=60)
    seen = host.seen("Cust1")
    limited_at = seen[19].at
    assert seen[19].status == 429
    after = {r["id"]: r for r in ran}
    assert set(after) == {first.id, second.id} | {r.id for r in others}
    # Both slots were free for the other tenant meanwhile.
    assert all(after[r.id]["at"] < limited_at + 5 for r in others)
    # Nobody called Cust1 for 5 s, on any worker; then both its tasks completed.
    assert all(s.at >= limited_at + 5 for s in seen[20:])
    assert (after[first.id]["retries"], after[first.id]["held"]) == (0, 1)
    assert after[second.id]["held"] == 1
    assert host.requests("Cust1") == 20 + 100 + 5
