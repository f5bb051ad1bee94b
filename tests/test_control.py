"""The control task, as the webhook sends it, on real workers and a real broker."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import gateapp
import pytest
import redis
from workers import Harness, wait_until, worker_env

from celery_tenant_gate import gate_for
from celery_tenant_gate.gate.gate import Gate
from celery_tenant_gate.io.broker.redis_control import redis_control_queue
from celery_tenant_gate.model.notification import ChangeType
from celery_tenant_gate.testing import FakeSuperOffice
from celery_tenant_gate.worker.control import CONTROL_TASK

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.fixture
def env(redis_url: str, key_prefix: str, superoffice: FakeSuperOffice) -> dict[str, str]:
    return {**worker_env(redis_url, redis_url, key_prefix, superoffice), "GATE_MIN_PAUSE": "1"}


def notify(app: Any, change: ChangeType, ctx: str, **extra: Any) -> None:
    gate = gate_for(app)
    app.send_task(
        CONTROL_TASK,
        kwargs={
            "change_type": int(change),
            "context_id": ctx,
            "received_at": time.time(),
            "token_iat": extra.pop("iat", time.time()),
            **extra,
        },
        queue=gate.config.control_queue,
    )


def _paused(gate: Gate, ctx: str) -> bool:
    record = gate.state(ctx).record
    return record is not None and record.paused


def test_upgrade_pauses_on_two_workers_and_resumes_without_a_resume_notification(
    env: dict[str, str], harness: Harness, superoffice: FakeSuperOffice
) -> None:
    superoffice.set_state("Cust1", "Running", valid_for=0.3)
    superoffice.set_state("Cust2", "Running", valid_for=60)
    app = gateapp.make_app(env)
    gate = gate_for(app)
    harness.worker("prefork", concurrency=2)
    harness.worker("threads", concurrency=2)
    work = app.tasks["gateapp.work"]
    work.delay("Cust1", -1)
    harness.wait_ran(1)

    notify(app, ChangeType.Upgrade, "Cust1", version_name="Release 10.3.8")
    wait_until(lambda: _paused(gate, "Cust1"), what="paused by the notification")
    paused_at = time.time()
    superoffice.set_state("Cust1", "OfflineMaintenance", valid_for=0.3)
    held = [work.delay("Cust1", n) for n in range(10)]
    others = [work.delay("Cust2", n) for n in range(5)]
    harness.wait_ids({r.id for r in others})
    assert [r for r in harness.seen if r["ctx"] == "Cust1" and r["at"] > paused_at] == []

    superoffice.set_state("Cust1", "Running", valid_for=60)  # and no Resume notification
    harness.wait_ids({r.id for r in held})
    assert sorted(r["n"] for r in harness.ran_now() if r["ctx"] == "Cust1") == [-1, *range(10)]
    assert not _paused(gate, "Cust1")


def test_an_upgrade_while_the_state_api_says_running_holds_for_the_minimum_pause(
    env: dict[str, str], harness: Harness, superoffice: FakeSuperOffice
) -> None:
    # SuperOffice announces an Upgrade before it starts: the State API may still say
    # Running. The tenant is held for tenant_gate_webhook_min_pause all the same, then
    # resumes by itself (no Resume notification).
    superoffice.set_state("Cust1", "Running", valid_for=60)
    app = gateapp.make_app({**env, "GATE_MIN_PAUSE": "2"})
    gate = gate_for(app)
    harness.worker("solo", GATE_MIN_PAUSE="2")
    notify(app, ChangeType.Upgrade, "Cust1", version_name="Release 10.3.8")
    wait_until(lambda: _paused(gate, "Cust1"), what="paused by the notification")
    record = gate.states.store.get("Cust1")
    assert record is not None and record.resume_not_before > record.paused_at
    assert record.resume_not_before - record.paused_at == pytest.approx(2.0, abs=0.5)
    app.tasks["gateapp.work"].delay("Cust1", 1)
    (ran,) = harness.wait_ran(1)
    assert ran["at"] >= record.resume_not_before  # not a moment before the minimum pause
    wait_until(lambda: not _paused(gate, "Cust1"), what="resumed by itself")


@contextmanager
def served_webhook(env: dict[str, str], superoffice: FakeSuperOffice) -> Iterator[str]:
    """The app's webhook, served over real HTTP on loopback by plain WSGI."""
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from celery_tenant_gate.web.wsgi import make_wsgi_app

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    env.update(GATE_JWKS=superoffice.jwks_url, GATE_ISSUER=superoffice.issuer)
    server = make_server("127.0.0.1", 0, make_wsgi_app(gateapp.make_app(env)), handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


@pytest.fixture
def webhook_url(env: dict[str, str], superoffice: FakeSuperOffice) -> Iterator[str]:
    with served_webhook(env, superoffice) as url:
        yield url


def _direct(env: dict[str, str]) -> Any:
    """How the webhook of the app of *env* writes the control task (None: kombu)."""
    app = gateapp.make_app(env)
    return redis_control_queue(
        app, gate_for(app).config.control_queue, redis.Redis.from_url(env["GATE_REDIS"])
    )


def test_an_upgrade_posted_to_the_webhook_pauses_the_tenant_on_the_workers(
    env: dict[str, str], harness: Harness, superoffice: FakeSuperOffice, webhook_url: str
) -> None:
    import requests

    superoffice.set_state("Cust1", "Running", valid_for=0.3)
    app = gateapp.make_app(env)
    gate = gate_for(app)
    assert _direct(env).same_as_store  # recorded and written in one Lua script
    harness.worker("solo")
    harness.worker("threads", concurrency=2)
    body = superoffice.notification("Cust1", int(ChangeType.Upgrade))
    answer = requests.post(webhook_url, json=body, timeout=10)
    assert answer.status_code == 202
    assert requests.post(webhook_url, json=body, timeout=10).status_code == 409  # a replay
    wait_until(lambda: _paused(gate, "Cust1"), what="paused through the webhook")
    paused_at = time.time()
    superoffice.set_state("Cust1", "OfflineMaintenance", valid_for=0.3)
    sent = [app.tasks["gateapp.work"].delay("Cust1", n) for n in range(5)]
    wait_until(lambda: gate.state("Cust1").held == 5, what="5 held")
    assert [r for r in harness.ran_now() if r["at"] > paused_at] == []
    superoffice.set_state("Cust1", "Running", valid_for=60)  # no Resume notification
    harness.wait_ids({r.id for r in sent})


def test_a_notification_written_to_a_broker_of_its_own_pauses_the_workers(
    redis_url: str, key_prefix: str, superoffice: FakeSuperOffice
) -> None:
    import requests

    from celery_tenant_gate.testing import EmbeddedRedis

    superoffice.set_state("Cust1", "Running", valid_for=0.3)
    with EmbeddedRedis() as broker:
        env = {**worker_env(broker.url, redis_url, key_prefix, superoffice), "GATE_MIN_PAUSE": "1"}
        direct = _direct(env)
        assert direct is not None and not direct.same_as_store  # SET NX, then LPUSH
        harness = Harness(env, redis_url)
        try:
            harness.worker("solo")
            app = gateapp.make_app(env)
            gate = gate_for(app)
            with served_webhook(env, superoffice) as url:
                body = superoffice.notification("Cust1", int(ChangeType.Suspend))
                assert requests.post(url, json=body, timeout=10).status_code == 202
            wait_until(lambda: _paused(gate, "Cust1"), what="paused through the webhook")
            superoffice.set_state("Cust1", "Suspended", valid_for=0.3)
            sent = app.tasks["gateapp.work"].delay("Cust1", 1)
            wait_until(lambda: gate.state("Cust1").held == 1, what="held")
            superoffice.set_state("Cust1", "Running", valid_for=60)
            harness.wait_ids({sent.id})
        finally:
            harness.stop()


def test_delete_drops_everything_and_counts_it(
    env: dict[str, str], harness: Harness, superoffice: FakeSuperOffice
) -> None:
    superoffice.set_state("Cust3", "Running", valid_for=60)
    app = gateapp.make_app(env)
    gate = gate_for(app)
    gate.pause("Cust3", "before the delete")  # some work waits when the delete comes
    work = app.tasks["gateapp.work"]
    for n in range(5):
        work.delay("Cust3", n)
    harness.worker("solo")
    wait_until(lambda: gate.state("Cust3").held == 5, what="5 held")
    superoffice.set_state("Cust3", "Deleted", valid_for=60)
    notify(app, ChangeType.Delete, "Cust3")
    wait_until(lambda: gate.dead.count("Cust3") == 5, what="the held 5 dropped")
    for n in range(5, 8):
        work.delay("Cust3", n)
    wait_until(lambda: gate.dead.count("Cust3") == 8, what="new work dropped too")
    assert harness.ran_now() == []
    assert gate.state("Cust3").held == 0
    # Sweeps stop visiting it (they would grow with every tenant ever deleted); its
    # record still says deleted, so its work keeps being dropped.
    store = gate.states.store
    wait_until(
        lambda: "Cust3" not in store.paused() and "Cust3" not in store.held_tenants(),
        what="a deleted tenant no longer swept",
    )
    work.delay("Cust3", 8)
    wait_until(lambda: gate.dead.count("Cust3") == 9, what="still dropped")
    assert harness.ran_now() == []


def test_an_unconfirmed_delete_drops_nothing(
    env: dict[str, str], harness: Harness, superoffice: FakeSuperOffice
) -> None:
    # A Delete the State API never confirms (a captured token re-sent as a Delete, say):
    # the tenant waits, its work is kept, and it runs again when the State API says so.
    superoffice.set_state("Cust3", "Running", valid_for=0.3)
    app = gateapp.make_app(env)
    gate = gate_for(app)
    harness.worker("solo")
    superoffice.forget("Cust3")  # State Unknown from now on: never Deleted
    notify(app, ChangeType.Delete, "Cust3")
    wait_until(lambda: _paused(gate, "Cust3"), what="paused")
    work = app.tasks["gateapp.work"]
    work.delay("Cust3", 1)
    wait_until(lambda: gate.state("Cust3").held == 1, what="held")
    record = gate.states.store.get("Cust3")
    assert record is not None and record.delete_after > 0
    wait_until(
        lambda: (gate.states.store.get("Cust3") or record).delete_after == 0,
        what="the wait for a confirmation over (tenant_gate_delete_confirm_timeout)",
    )
    assert gate.dead.count("Cust3") == 0 and gate.state("Cust3").held == 1
    superoffice.set_state("Cust3", "Running", valid_for=60)
    (ran,) = harness.wait_ran(1)
    assert (ran["ctx"], ran["n"]) == ("Cust3", 1)
    assert gate.dead.count("Cust3") == 0


def _api_of(gate: Any, ctx: str) -> str:
    record = gate.states.store.get(ctx)
    return record.state.api if record is not None and record.state is not None else ""


def test_move_switches_to_the_endpoint_the_state_api_confirms(
    env: dict[str, str], harness: Harness, superoffice: FakeSuperOffice
) -> None:
    superoffice.set_state(
        "Cust4", "Running", valid_for=3600, endpoint="https://online1.superoffice.com"
    )
    app = gateapp.make_app(env)
    gate = gate_for(app)
    harness.worker("solo")
    work = app.tasks["gateapp.work"]
    work.delay("Cust4", 1)
    (first,) = harness.wait_ran(1)
    assert first["api"] == "https://online1.superoffice.com/Cust4/api"
    # SuperOffice moved it: its State API says so, and the notification names the host.
    superoffice.set_state(
        "Cust4", "Running", valid_for=3600, endpoint="https://online7.superoffice.com"
    )
    notify(app, ChangeType.Move, "Cust4", public_endpoint="online7.superoffice.com")
    wait_until(
        lambda: _api_of(gate, "Cust4") == "https://online7.superoffice.com/Cust4/api",
        what="the new endpoint stored",
    )
    assert not _paused(gate, "Cust4")
    work.delay("Cust4", 2)
    second = harness.wait_ran(2)[1]
    assert second["api"] == "https://online7.superoffice.com/Cust4/api"


def test_a_move_the_state_api_does_not_confirm_changes_no_endpoint(
    env: dict[str, str], harness: Harness, superoffice: FakeSuperOffice
) -> None:
    # A captured token re-sent as a Move to a host of the attacker's: the State API
    # still says online1. The endpoint stays; the tenant waits for one more answer.
    superoffice.set_state(
        "Cust4", "Running", valid_for=3600, endpoint="https://online1.superoffice.com"
    )
    app = gateapp.make_app(env)
    gate = gate_for(app)
    harness.worker("solo")
    notify(app, ChangeType.Move, "Cust4", public_endpoint="evil.example.com")
    wait_until(lambda: _paused(gate, "Cust4"), what="paused: the move is not confirmed")
    assert _api_of(gate, "Cust4") == "https://online1.superoffice.com/Cust4/api"
    wait_until(lambda: not _paused(gate, "Cust4"), what="resumed after the State API is asked")
    work = app.tasks["gateapp.work"]
    work.delay("Cust4", 1)
    (ran,) = harness.wait_ran(1)
    assert ran["api"] == "https://online1.superoffice.com/Cust4/api"


def test_a_late_notification_does_not_undo_a_newer_one(
    env: dict[str, str], harness: Harness, superoffice: FakeSuperOffice
) -> None:
    superoffice.set_state("Cust1", "Suspended", valid_for=60)
    app = gateapp.make_app(env)
    gate = gate_for(app)
    harness.worker("solo")
    now = time.time()
    notify(app, ChangeType.Suspend, "Cust1", iat=now)
    wait_until(lambda: _paused(gate, "Cust1"), what="paused")
    superoffice.set_state("Cust1", "Running", valid_for=60)
    notify(app, ChangeType.Resume, "Cust1", iat=now - 60)  # issued before the Suspend
    notify(app, ChangeType.BackupRestored, "Cust1", iat=now + 1)  # a marker: applied last
    wait_until(
        lambda: (
            (gate.states.store.get("Cust1") or gate.state("Cust1").record).notified_at  # type: ignore[union-attr]
            >= now + 1
        ),
        what="the marker applied",
    )
    record = gate.states.store.get("Cust1")
    assert record is not None and record.paused  # the late Resume changed nothing


def _resume_applied(gate: Gate, ctx: str, issued: float) -> bool:
    # Noted first (notified_at), acted on after (a Resume clears resume_not_before).
    record = gate.states.store.get(ctx)
    return record is not None and record.notified_at >= issued and record.resume_not_before == 0


def test_a_resume_the_state_api_does_not_confirm_holds_until_the_tenant_runs(
    env: dict[str, str], harness: Harness, superoffice: FakeSuperOffice
) -> None:
    superoffice.set_state("Cust2", "Running", valid_for=0.3)
    app = gateapp.make_app(env)
    gate = gate_for(app)
    work = app.tasks["gateapp.work"]

    def held() -> int:  # from the store and the broker only: the test asks no State API
        return gate.state("Cust2", look_up=False).held

    harness.worker("solo")
    notify(app, ChangeType.Suspend, "Cust2")
    wait_until(lambda: _paused(gate, "Cust2"), what="paused by the Suspend")
    superoffice.set_state("Cust2", "Suspended", valid_for=0.3)
    sent = [work.delay("Cust2", n) for n in range(5)]
    wait_until(lambda: held() == 5, what="5 held")

    issued = time.time()
    notify(app, ChangeType.Resume, "Cust2", iat=issued)  # the State API says Suspended
    wait_until(lambda: _resume_applied(gate, "Cust2", issued), what="the Resume applied")
    # The worker keeps asking the State API (its sweeps); the tenant stays paused.
    asked = superoffice.calls("Cust2")
    wait_until(lambda: superoffice.calls("Cust2") >= asked + 3, what="the State API asked again")
    record = gate.states.store.get("Cust2")
    assert record is not None and record.paused
    assert record.pause_reason == "Suspend notification", "still paused by the Suspend"
    assert held() == 5
    assert [r for r in harness.ran_now() if r["ctx"] == "Cust2"] == []

    superoffice.set_state("Cust2", "Running", valid_for=60)  # no second Resume
    harness.wait_ids({r.id for r in sent})
    ran = [r["n"] for r in harness.ran_now() if r["ctx"] == "Cust2"]
    assert ran == list(range(5)), "each held task once, in the order sent"
    assert held() == 0
    assert not _paused(gate, "Cust2")


def test_pause_and_resume_by_hand_through_the_workers(
    env: dict[str, str], harness: Harness, superoffice: FakeSuperOffice
) -> None:
    from celery_tenant_gate.worker.control import send

    superoffice.set_state("Cust1", "Running", valid_for=60)
    app = gateapp.make_app(env)
    gate = gate_for(app)
    harness.worker("solo")
    send(app, "pause", "Cust1", reason="data migration")
    wait_until(lambda: _paused(gate, "Cust1"), what="paused by hand")
    record = gate.state("Cust1").record
    assert record is not None and record.pause_reason == "data migration"
    sent = app.tasks["gateapp.work"].delay("Cust1", 1)
    wait_until(lambda: gate.state("Cust1").held == 1, what="held")
    send(app, "resume", "Cust1")
    (ran,) = harness.wait_ran(1)
    assert ran["id"] == sent.id
    with pytest.raises(ValueError, match="unknown control action"):
        send(app, "explode", "Cust1")


def test_shuffled_and_duplicated_notifications_end_as_the_state_api_says(
    env: dict[str, str], harness: Harness, superoffice: FakeSuperOffice
) -> None:
    rng = random.Random(7)
    tenants = [f"Cust{100 + i}" for i in range(20)]
    final = {ctx: rng.choice(["Running", "Suspended", "Deleted"]) for ctx in tenants}
    for ctx in tenants:
        superoffice.set_state(ctx, "Running", valid_for=0.3)
    timing = {"GATE_MIN_PAUSE": "0.5", "GATE_DELETE_TIMEOUT": "3600"}
    app = gateapp.make_app({**env, **timing})
    gate = gate_for(app)
    harness.worker("threads", concurrency=4, **timing)
    changes = [
        ChangeType.Upgrade,
        ChangeType.Suspend,
        ChangeType.Resume,
        ChangeType.Delete,
        ChangeType.BackupRestored,
    ]
    base = time.time()
    batch = []
    for _ in range(500):
        ctx = rng.choice(tenants)
        batch.append((rng.choice(changes), ctx, base + rng.random() * 10))
    batch += batch  # every notification twice
    rng.shuffle(batch)
    for ctx in tenants:
        superoffice.set_state(ctx, final[ctx], valid_for=0.3)
    for change, ctx, iat in batch:
        notify(app, change, ctx, iat=iat)

    def settled() -> bool:
        for ctx in tenants:
            record = gate.states.store.get(ctx)
            verdict = gate.states.policy.decide(record, time.time())
            expected = {"Running": "run", "Suspended": "hold", "Deleted": "drop"}[final[ctx]]
            if verdict.value != expected:
                return False
        return True

    try:
        wait_until(settled, timeout=90, what="every tenant as the State API says")
    except AssertionError:
        for ctx in tenants:
            record = gate.states.store.get(ctx)
            print(ctx, final[ctx], gate.states.policy.decide(record, time.time()), record)
        print(harness.workers[0].log[-5000:])
        raise


def test_sweeps_watch_an_emptied_tenant_queue_until_the_forget_time(
    env: dict[str, str], superoffice: FakeSuperOffice, redis_client: Any
) -> None:
    # A released task that the broker puts back (its worker was killed before acking
    # it) can land in its tenant queue again after the queue was emptied: sweeps keep
    # looking at the queue for tenant_gate_held_forget_after, and release it again.
    superoffice.set_state("Cust1", "Running")
    superoffice.set_state("Cust2", "Running")
    app = gateapp.make_app(env)
    gate = gate_for(app)
    store = gate.states.store
    now = time.time()
    forget_after = gate.config.held_forget_after
    store.mark_held("Cust1", now - forget_after - 1)  # emptied long ago
    store.mark_held("Cust2", now - 10)  # emptied just now
    # Held long ago and still holding (paused by hand): watched, however long ago.
    gate.pause("Cust3", "by hand")
    app.tasks["gateapp.work"].apply_async(("Cust3", 1), queue=gate.queue_for("Cust3"))
    store.mark_held("Cust3", now - forget_after - 1)

    gate.sweep()
    assert set(store.held_tenants()) == {"Cust2", "Cust3"}  # Cust1 is forgotten

    # The broker puts a released task of Cust2 back where it was consumed from.
    app.tasks["gateapp.work"].apply_async(("Cust2", 1), queue=gate.queue_for("Cust2"))
    assert gate.state("Cust2").held == 1
    assert "Cust2" in gate.sweep()  # released again
    assert gate.state("Cust2").held == 0
    assert redis_client.llen(f"{env['GATE_PREFIX']}:q.work") == 1
