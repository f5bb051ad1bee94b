"""A resume with a real worker, on both brokers: the held tasks run while the tenant
is still paused, and the tasks given during the resume and after it run after them."""

from __future__ import annotations

from typing import Any

import gateapp
import pytest
from workers import Harness, wait_until, worker_env

from celery_tenant_gate.gate import signals
from celery_tenant_gate.testing import FakeSuperOffice

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.fixture(params=["redis", "amqp"])
def broker(request: pytest.FixtureRequest, redis_url: str) -> str:
    if request.param == "amqp":
        return str(request.getfixturevalue("amqp_url"))
    return redis_url


@pytest.fixture
def env(
    broker: str, redis_url: str, key_prefix: str, superoffice: FakeSuperOffice
) -> dict[str, str]:
    return worker_env(broker, redis_url, key_prefix, superoffice)


def test_held_tasks_run_before_the_tasks_given_during_and_after_the_resume(
    env: dict[str, str], harness: Harness, superoffice: FakeSuperOffice
) -> None:
    from celery_tenant_gate import gate_for

    superoffice.set_state("Cust1", "Running")
    app = gateapp.make_app(env)
    gate = gate_for(app)
    work = app.tasks["gateapp.work"]
    gate.pause("Cust1", "by the test")
    held = [work.delay("Cust1", n).id for n in range(30)]
    harness.worker("solo")
    wait_until(lambda: gate.state("Cust1").held == 30, what="30 held")
    during: list[str] = []
    calls: list[str] = []
    paused_while_one_ran: list[bool] = []

    def meanwhile(sender: str, **kwargs: Any) -> None:
        # (The signal logs what a receiver raises: the test reads what it noted.)
        calls.append(sender)
        if len(calls) > 1:
            return
        # The tenant is still paused: its held tasks run (they were held before) ...
        harness.wait_ran(1, timeout=30)
        paused_while_one_ran.append("Cust1" in gate.paused())
        # ... and the tasks given now are held behind them.
        during.extend(work.delay("Cust1", n).id for n in range(30, 35))

    signals.task_released.connect(meanwhile)
    try:
        gate.resume("Cust1")
    finally:
        signals.task_released.disconnect(meanwhile)
    assert paused_while_one_ran == [True]
    after = [work.delay("Cust1", n).id for n in range(35, 40)]

    ran = [r["id"] for r in harness.wait_ran(40)]
    assert ran[:30] == held  # in order, before anything given during or after
    assert sorted(ran[30:]) == sorted(during + after)
    assert len(harness.ran_now()) == 40  # once each
    assert "Cust1" not in gate.paused()
