"""Signals, Prometheus metrics and Celery task events, from real runs: real worker
subprocesses on real brokers, the signals they received recorded in Redis, their
metrics scraped over HTTP, their events captured by a Celery event receiver."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gateapp
import pytest
import redis
import requests
from prometheus_client.parser import text_string_to_metric_families
from workers import Harness, wait_until, worker_env

from celery_tenant_gate import gate_for
from celery_tenant_gate.config.settings import CONTROL_TASK
from celery_tenant_gate.io import metrics
from celery_tenant_gate.io.superoffice.state_api import StateClient
from celery_tenant_gate.model.notification import ChangeType
from celery_tenant_gate.testing import FakeSuperOffice
from celery_tenant_gate.testing.superoffice import Reply
from celery_tenant_gate.worker import control

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample on http://127.0.0.1:port/metrics, by name and labels."""
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def tasks(samples: dict[Any, float], outcome: str, task: str = "gateapp.work") -> float:
    return samples.get(("tenant_gate_tasks_total", (("outcome", outcome), ("task", task))), 0.0)


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


class EventLog:
    """A real ``app.events.Receiver`` on the broker, in a thread."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.events: list[dict[str, Any]] = []
        self.receiver: Any = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        # Fanout on Redis is pub/sub: wait until it listens, by sending a probe.
        deadline = time.monotonic() + 20
        while not self.of("worker-probe"):
            assert time.monotonic() < deadline, "the event receiver never got its probe"
            with app.events.default_dispatcher() as dispatcher:
                dispatcher.send("worker-probe")
            time.sleep(0.1)

    def _run(self) -> None:
        with self.app.connection_for_read() as connection:
            self.receiver = self.app.events.Receiver(connection, handlers={"*": self.events.append})
            self.receiver.capture(limit=None, timeout=None, wakeup=False)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [event for event in list(self.events) if event["type"] == kind]

    def stop(self) -> None:
        if self.receiver is not None:
            self.receiver.should_stop = True
        self._thread.join(10)


def local_app(env: dict[str, str]) -> Any:
    """The app for this process: it neither records signals nor serves metrics (the
    workers do), so that nothing of this test stays connected in the test process."""
    return gateapp.make_app(
        {k: v for k, v in env.items() if k not in {"GATE_RECORD_SIGNALS", "GATE_METRICS_PORT"}}
    )


def recorded(client: redis.Redis, prefix: str) -> list[dict[str, Any]]:
    return [json.loads(item) for item in client.lrange(f"{prefix}:signals", 0, -1)]


def of(signals: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [s for s in signals if s["signal"] == name]


def notify(app: Any, change: ChangeType, ctx: str, **extra: Any) -> None:
    app.send_task(
        CONTROL_TASK,
        kwargs={"change_type": int(change), "context_id": ctx, "token_iat": time.time(), **extra},
        queue=gate_for(app).config.control_queue,
    )


@pytest.fixture
def env(
    redis_url: str, key_prefix: str, superoffice: FakeSuperOffice, tmp_path: Path
) -> dict[str, str]:
    (tmp_path / "prometheus").mkdir()
    return {
        **worker_env(redis_url, redis_url, key_prefix, superoffice),
        "GATE_RECORD_SIGNALS": "1",
        "GATE_EVENTS": "1",
        "GATE_METRICS_PORT": str(free_port()),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus"),
    }


@pytest.fixture
def events(env: dict[str, str]) -> Iterator[EventLog]:
    log = EventLog(local_app(env))
    yield log
    log.stop()


def test_a_run_is_told_by_signals_metrics_and_events(
    env: dict[str, str],
    harness: Harness,
    superoffice: FakeSuperOffice,
    redis_client: redis.Redis,
    events: EventLog,
) -> None:
    """Prefork, so that what happens in pool processes (the control task releasing,
    tasks starting) is counted too, through prometheus_client's multiprocess mode."""
    prefix, port = env["GATE_PREFIX"], int(env["GATE_METRICS_PORT"])
    for ctx in ("Cust1", "Cust2"):
        superoffice.set_state(ctx, "Running", valid_for=60)
    superoffice.set_state("Cust3", "Deleted", valid_for=60)
    app = local_app(env)
    gate = gate_for(app)
    for ctx in ("Cust2", "Cust3"):  # known: a tenant never seen is held at first
        gate.states.refresh(ctx)
    asked_here = superoffice.calls()
    work = app.tasks["gateapp.work"]
    worker = harness.worker("prefork", concurrency=2)
    main_pid = worker.process.pid

    control.send(app, "pause", "Cust1", reason="by the test")
    wait_until(lambda: "Cust1" in gate.paused(), what="Cust1 paused by the control task")
    held = [work.delay("Cust1", n).id for n in range(20)]
    ran = [work.delay("Cust2", n).id for n in range(10)]
    dropped = [work.delay("Cust3", n).id for n in range(5)]
    harness.wait_ids(set(ran))
    wait_until(lambda: gate.held_queues.count(gate.queue_for("Cust1")) == 20, what="20 held")
    wait_until(lambda: gate.dead.count("Cust3") == 5, what="5 dropped")

    during = scrape(port)
    assert value(during, "tenant_gate_held_messages") == 20
    assert value(during, "tenant_gate_paused_tenants") == 1
    assert (tasks(during, "held"), tasks(during, "dropped"), tasks(during, "run")) == (20, 5, 10)

    control.send(app, "resume", "Cust1")
    harness.wait_ids(set(held))
    # One at a time: a notification issued before one applied is ignored, and the
    # pool runs two control tasks at once.
    # Cust2 moved: the State API says so (a Move's PublicEndpoint is only compared).
    superoffice.set_state(
        "Cust2", "Running", valid_for=60, endpoint="https://online9.superoffice.com"
    )
    for change, ctx, signal, extra in (
        (ChangeType.Move, "Cust2", "tenant_moved", {"public_endpoint": "online9.superoffice.com"}),
        (ChangeType.BackupRestored, "Cust2", "tenant_backup_restored", {}),
        (ChangeType.Delete, "Cust3", "tenant_deleted", {}),
    ):
        notify(app, change, ctx, **extra)
        wait_until(lambda s=signal: of(recorded(redis_client, prefix), s), what=signal)

    # Signals: each once, with the right arguments, in the process that acted.
    signals = recorded(redis_client, prefix)
    assert Counter(s["signal"] for s in signals) == {
        "task_held": 20,
        "task_released": 20,
        "task_dropped": 5,
        "tenant_paused": 2,
        "tenant_resumed": 1,
        "tenant_deleted": 1,
        "tenant_moved": 1,
        "tenant_backup_restored": 1,
    }
    held_signals = of(signals, "task_held")
    assert [s["task_id"] for s in held_signals] == held  # in publish order
    assert {(s["context_id"], s["task_name"], s["queue"], s["pid"]) for s in held_signals} == {
        ("Cust1", "gateapp.work", gate.queue_for("Cust1"), main_pid)  # by the consumer
    }
    released = of(signals, "task_released")
    assert [s["task_id"] for s in released] == held
    assert {(s["context_id"], s["queue"]) for s in released} == {("Cust1", f"{prefix}:q.work")}
    assert main_pid not in {s["pid"] for s in released}  # by the control task, in the pool
    drops = of(signals, "task_dropped")
    assert sorted(s["task_id"] for s in drops) == sorted(dropped)
    assert {(s["context_id"], s["reason"]) for s in drops} == {
        ("Cust3", "tenant dropped: state Deleted")
    }
    assert [(s["context_id"], s["by"], s["reason"]) for s in of(signals, "tenant_paused")] == [
        ("Cust1", "manual", "by the test"),
        ("Cust3", "webhook", "Delete notification"),
    ]
    assert [(s["context_id"], s["released"]) for s in of(signals, "tenant_resumed")] == [
        ("Cust1", 20)
    ]
    assert [s["context_id"] for s in of(signals, "tenant_deleted")] == ["Cust3"]
    (moved,) = of(signals, "tenant_moved")
    assert (moved["context_id"], moved["endpoint"], moved["api"]) == (
        "Cust2",
        "https://online9.superoffice.com/Cust2",
        "https://online9.superoffice.com/Cust2/api",
    )
    (restored,) = of(signals, "tenant_backup_restored")
    assert (restored["context_id"], restored["state"]) == ("Cust2", "Running")

    # Metrics: the counts of every process of the worker, as the run did.
    after = scrape(port)
    assert (tasks(after, "held"), tasks(after, "released"), tasks(after, "dropped")) == (20, 20, 5)
    assert tasks(after, "run") == 30
    assert {
        change: value(after, "tenant_gate_tenant_changes_total", change=change)
        for change in ("paused", "resumed", "deleted", "moved", "backup_restored")
    } == {"paused": 2, "resumed": 1, "deleted": 1, "moved": 1, "backup_restored": 1}
    assert value(after, "tenant_gate_held_messages") == 0
    # Cust3, deleted, leaves the paused tenants at the next sweep (0.2 s): wait for it,
    # so that the gauge and the store are read with nothing left to change them.
    wait_until(lambda: not gate.paused(), what="the deleted Cust3 retired by the sweep")
    final = scrape(port)
    assert value(final, "tenant_gate_paused_tenants") == len(gate.paused()) == 0
    calls = superoffice.calls() - asked_here  # the worker's (this test only reads since)
    assert calls >= 3
    assert value(final, "tenant_gate_state_api_requests_total") == calls
    assert value(final, "tenant_gate_state_api_seconds_count") == calls
    hits, misses = (
        value(after, "tenant_gate_cache_hits_total"),
        value(after, "tenant_gate_cache_misses_total"),
    )
    assert misses >= 3 and hits >= 1
    assert hits + misses >= 55  # the consumer looks up every task it receives, at least

    # Events: what Flower would see.
    wait_until(
        lambda: len(events.of("task-released")) >= 20 and len(events.of("task-succeeded")) >= 30,
        what="task events",
    )
    assert [e["uuid"] for e in events.of("task-held")] == held
    assert sorted(e["uuid"] for e in events.of("task-released")) == sorted(held)
    assert sorted(e["uuid"] for e in events.of("task-dropped")) == sorted(dropped)
    assert {(e["tenant"], e["name"]) for e in events.of("task-held")} == {("Cust1", "gateapp.work")}
    assert {e["queue"] for e in events.of("task-released")} == {f"{prefix}:q.work"}
    assert {e["tenant"] for e in events.of("task-dropped")} == {"Cust3"}
    state = app.events.State()  # as Flower keeps it; the order of arrival does not matter
    for event in list(events.events):
        state.event(event)
    assert {state.tasks[i].state for i in dropped} == {"DROPPED"}
    assert {state.tasks[i].state for i in held} == {"SUCCESS"}


def test_released_tasks_are_told_on_rabbitmq(
    amqp_url: str,
    redis_url: str,
    key_prefix: str,
    superoffice: FakeSuperOffice,
    redis_client: redis.Redis,
) -> None:
    """A solo worker on RabbitMQ: the control task runs on the consumer's thread, so
    its events go out through the worker's own event dispatcher."""
    from workers import Harness

    env = {
        **worker_env(amqp_url, redis_url, key_prefix, superoffice),
        "GATE_RECORD_SIGNALS": "1",
        "GATE_EVENTS": "1",
        "GATE_METRICS_PORT": str(free_port()),
    }
    superoffice.set_state("Cust1", "Running", valid_for=60)
    app = local_app(env)
    gate = gate_for(app)
    harness = Harness(env, redis_url)
    log = EventLog(app)
    try:
        harness.worker("solo")
        control.send(app, "pause", "Cust1")
        wait_until(lambda: "Cust1" in gate.paused(), what="Cust1 paused")
        held = [app.tasks["gateapp.work"].delay("Cust1", n).id for n in range(10)]
        wait_until(lambda: gate.held_queues.count(gate.queue_for("Cust1")) == 10, what="held")
        control.send(app, "resume", "Cust1")
        harness.wait_ids(set(held))
        wait_until(lambda: len(log.of("task-released")) == 10, what="10 task-released events")
        signals = recorded(redis_client, key_prefix)
        assert [s["task_id"] for s in of(signals, "task_released")] == held
        assert {s["queue"] for s in of(signals, "task_released")} == {f"{key_prefix}:q.work"}
        assert [e["uuid"] for e in log.of("task-released")] == held
        after = scrape(int(env["GATE_METRICS_PORT"]))
        assert (tasks(after, "held"), tasks(after, "released"), tasks(after, "run")) == (
            10,
            10,
            10,
        )
    finally:
        log.stop()
        harness.stop()
        with app.connection_for_write() as conn:
            for name in (
                f"{key_prefix}:q.work",
                gate.queue_for("Cust1"),
                f"{key_prefix}:q.control",
            ):
                conn.default_channel.queue_delete(name)


def test_a_redis_release_names_its_tasks_in_the_order_they_will_run(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    from celery_tenant_gate.io.broker.redis_held import SEP, RedisHeldQueues
    from celery_tenant_gate.io.store.deadletters import DeadLetters
    from celery_tenant_gate.model.held import TaskRef

    tenant, work = f"{key_prefix}:tenant", f"{key_prefix}:work"

    def held(task_id: str, priority: str = "") -> None:
        route = {"exchange": "", "routing_key": work}
        envelope = {"body": "", "headers": {"id": task_id, "task": "t", "tenant_gate_route": route}}
        redis_client.lpush(tenant + (SEP + priority if priority else ""), json.dumps(envelope))

    for n in range(3):  # kombu publishes with LPUSH: the oldest is at the right
        held(f"a{n}")
        held(f"p{n}", priority="6")
    redis_client.lpush(tenant, "not a kombu message")  # dead-lettered, not moved
    told: list[list[TaskRef]] = []
    dead = DeadLetters(redis_client, key_prefix)
    queues = RedisHeldQueues(redis_client, default_queue=f"{key_prefix}:default", dead_letters=dead)
    assert queues.release(tenant, marker="m", on_moved=told.append) == 6
    assert told == [
        [TaskRef(f"a{n}", "t", work) for n in range(3)]
        + [TaskRef(f"p{n}", "t", work) for n in range(3)]
    ]
    # ... and that is the order a worker takes them in (BRPOP, priority 0 first).
    taken = [redis_client.rpop(key) for key in (work, work, work)]
    assert [json.loads(raw)["headers"]["id"] for raw in taken] == ["a0", "a1", "a2"]
    assert [letter.reason for letter in dead.list(tenant)] == [
        "not released: not a kombu message (no JSON object with a headers object)"
    ]
    assert queues.release(tenant, marker="m", on_moved=told.append) == 0
    assert len(told) == 1  # nothing moved: nothing told


@pytest.fixture(scope="session")
def served_metrics() -> Iterator[int]:
    """This process's metrics, on, and served over HTTP."""
    metrics.enable()
    port = free_port()
    server = metrics.serve(port, "127.0.0.1")
    yield port
    server.shutdown()
    server.server_close()


def test_state_api_requests_errors_and_latency_are_measured(
    served_metrics: int, superoffice: FakeSuperOffice
) -> None:
    superoffice.set_state("Cust1", "Running")
    superoffice.script("Cust2", Reply(status=503), Reply(status=503))
    superoffice.script("Cust3", Reply(status=404))
    client = StateClient(superoffice.state_api_url, retries=1, backoff=0.01)
    before = scrape(served_metrics)
    assert client.get("Cust1").running
    with pytest.raises(Exception, match="HTTP 503"):
        client.get("Cust2")  # two requests: one retry
    with pytest.raises(Exception, match="HTTP 404"):
        client.get("Cust3")
    after = scrape(served_metrics)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("tenant_gate_state_api_requests_total") == 4 == superoffice.calls()
    assert delta("tenant_gate_state_api_seconds_count") == 4
    assert delta("tenant_gate_state_api_errors_total", error="StateAPIUnavailable") == 2
    assert delta("tenant_gate_state_api_errors_total", error="StateAPINotFound") == 1


def test_webhook_answers_are_counted_by_status(
    served_metrics: int, env: dict[str, str], superoffice: FakeSuperOffice
) -> None:
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from celery_tenant_gate.web.wsgi import make_wsgi_app

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    env.update(GATE_JWKS=superoffice.jwks_url, GATE_ISSUER=superoffice.issuer)
    server = make_server("127.0.0.1", 0, make_wsgi_app(local_app(env)), handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}/"
    try:
        before = scrape(served_metrics)
        body = superoffice.notification("Cust1", int(ChangeType.Upgrade))
        answers = [
            requests.post(url, json=body, timeout=10).status_code,
            requests.post(url, json=body, timeout=10).status_code,  # its token again: 409
            requests.post(url, json={**body, "Token": "forged"}, timeout=10).status_code,
            requests.post(url, data=b"{}", timeout=10).status_code,  # no content type
            requests.get(url, timeout=10).status_code,
        ]
        after = scrape(served_metrics)
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()
    assert answers == [202, 409, 401, 415, 405]
    counted = {
        status: value(after, "tenant_gate_webhook_responses_total", status=status)
        - value(before, "tenant_gate_webhook_responses_total", status=status)
        for status in ("202", "409", "401", "415", "405", "400", "503")
    }
    assert counted == {"202": 1, "409": 1, "401": 1, "415": 1, "405": 1, "400": 0, "503": 0}


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def test_without_the_setting_prometheus_client_is_not_even_imported() -> None:
    result = _python("""
import sys
from celery import Celery
from celery_tenant_gate import gate_for, install
app = Celery("p", broker="redis://127.0.0.1:6379/0", set_as_current=False)
install(app)
gate_for(app).hooks
print("prometheus_client" in sys.modules)
""")
    assert result.stdout.strip() == "False", result.stderr


def test_metrics_without_prometheus_client_name_the_extra() -> None:
    result = _python("""
import sys
sys.modules["prometheus_client"] = None
from celery import Celery
from celery_tenant_gate import install
from celery_tenant_gate.model.errors import ConfigError
app = Celery("p", broker="redis://127.0.0.1:6379/0", set_as_current=False)
app.conf.tenant_gate_metrics = True
try:
    install(app)
except ConfigError as exc:
    print(exc)
""")
    assert "pip install 'celery-tenant-gate[prometheus]'" in result.stdout, result.stderr
