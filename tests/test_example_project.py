"""The example project, run as a user runs it: a real worker subprocess of
``example_project.vendorapp``, its real web app on loopback, SuperOffice's stand-in
(State API, JWKS, signed notifications) and the tenants' API stand-in."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from celery import Celery
from workers import wait_until

from celery_tenant_gate import gate_for
from celery_tenant_gate.gate.gate import Gate
from celery_tenant_gate.model.errors import ConfigError
from celery_tenant_gate.model.notification import ChangeType
from celery_tenant_gate.testing import FakeSuperOffice
from example_project.demo import processes
from example_project.demo.story import forget_namespace, gate_settings
from example_project.tenant_servers import TenantServers
from example_project.vendorapp import tasks
from example_project.vendorapp.activity import ActivityLog
from example_project.vendorapp.celery import make_app
from example_project.vendorapp.settings import Settings, SettingsError

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

HOSTS = {"Cust2001": "online1.superoffice.com", "Cust2002": "online2.superoffice.com"}


@dataclass
class Example:
    settings: Settings
    app: Celery
    gate: Gate
    superoffice: FakeSuperOffice
    servers: TenantServers
    webhook: str
    worker: processes.Service
    activity: ActivityLog

    def entries(self, ids: set[str], timeout: float = 30) -> dict[str, dict[str, Any]]:
        """Block (on the activity stream) until the bodies of *ids* have all run."""
        found: dict[str, dict[str, Any]] = {}
        after, deadline = "0", time.monotonic() + timeout
        while not ids <= found.keys():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"{len(ids - found.keys())} of {len(ids)} task(s) did not run:\n"
                    + self.worker.tail()
                )
            after, new = self.activity.follow(after, block=min(remaining, 1.0))
            found.update((e["id"], e) for e in new if e["id"] in ids and not e.get("error"))
        return found

    def post(self, ctx: str, change: ChangeType, **fields: Any) -> requests.Response:
        body = self.superoffice.notification(ctx, int(change), **fields)
        return requests.post(self.webhook, json=body, timeout=10)

    def paused(self, ctx: str) -> bool:
        record = self.gate.states.store.get(ctx)
        return record is not None and record.paused


@pytest.fixture(scope="module")
def example(redis_url: str) -> Iterator[Example]:
    with FakeSuperOffice() as superoffice, TenantServers() as servers:
        for ctx, host in HOSTS.items():
            superoffice.set_state(ctx, "Running", valid_for=1, endpoint=f"https://{host}")
        settings = Settings(
            broker_url=redis_url,
            redis_url=redis_url,
            namespace=f"tgtest-example-{uuid.uuid4().hex[:8]}",
            tenant_api_via=servers.url,
            web_port=0,
            # A minute: a tenant paused by an Upgrade cannot resume by itself during a
            # test, so a resume within the test is the Resume notification's doing.
            gate={**gate_settings(superoffice), "tenant_gate_webhook_min_pause": "60"},
        )
        worker = processes.worker(settings).start()
        web = processes.web(settings).start()
        app = make_app(settings)
        try:
            worker.wait_ready()
            web.wait_ready()
            yield Example(
                settings,
                app,
                gate_for(app),
                superoffice,
                servers,
                processes.web_url(web),
                worker,
                ActivityLog.from_url(redis_url, settings.activity_key),
            )
        finally:
            web.stop()
            worker.stop()
            gate_for(app).states.close()
            forget_namespace(settings, list(HOSTS))


def test_a_tenant_task_calls_the_tenants_current_api(example: Example) -> None:
    sync = example.app.tasks[tasks.sync_contacts.name]
    digest = example.app.tasks[tasks.send_digest.name]
    rates = example.app.tasks[tasks.refresh_exchange_rates.name]
    sent = [sync.delay("Cust2001"), digest.delay(context_id="Cust2001"), rates.delay()]
    ran = example.entries({r.id for r in sent})
    assert ran[sent[0].id]["api"] == "https://online1.superoffice.com/Cust2001/api"
    assert ran[sent[0].id]["contacts"] == 3
    assert ran[sent[1].id]["total"] == 3000
    assert ran[sent[2].id]["ctx"] is None
    assert example.servers.calls("online1.superoffice.com", "Cust2001") >= 2


def test_an_upgrade_posted_to_the_web_app_holds_the_tenant_until_a_resume(
    example: Example,
) -> None:
    ctx, other = "Cust2002", "Cust2001"
    sync = example.app.tasks[tasks.sync_contacts.name]
    example.entries({sync.delay(ctx).id})

    answer = example.post(ctx, ChangeType.Upgrade, version_name="Release 10.3.8")
    assert answer.status_code == 202, answer.text
    wait_until(lambda: example.paused(ctx), what=f"{ctx} paused by the webhook")
    record = example.gate.states.store.get(ctx)
    assert record is not None and record.paused_by == "webhook"
    paused_at = record.paused_at
    example.superoffice.set_state(
        ctx, "OfflineMaintenance", valid_for=1, endpoint=f"https://{HOSTS[ctx]}"
    )

    held = [sync.delay(ctx) for _ in range(5)]
    others = [sync.delay(other) for _ in range(3)]
    example.entries({r.id for r in others})  # the other tenant goes on
    wait_until(lambda: example.gate.state(ctx).held == 5, what="5 tasks held")
    assert example.paused(ctx)

    example.superoffice.set_state(ctx, "Running", valid_for=1, endpoint=f"https://{HOSTS[ctx]}")
    answer = example.post(ctx, ChangeType.Resume)
    assert answer.status_code == 202, answer.text
    ran = example.entries({r.id for r in held})
    assert not example.paused(ctx)
    entries = [ran[r.id] for r in held]
    assert all(entry["started"] > paused_at for entry in entries)
    assert all(entry["held"] >= 1 for entry in entries)
    starts = [entry["started"] for entry in entries]
    assert starts == sorted(starts), "released out of publish order"
    assert example.gate.state(ctx).held == 0


def test_a_forged_notification_is_refused_by_the_web_app(example: Example) -> None:
    body = example.superoffice.notification(
        "Cust2001",
        int(ChangeType.Suspend),
        token=example.superoffice.sign(example.superoffice.claims("Cust2001"), alg="none"),
    )
    answer = requests.post(example.webhook, json=body, timeout=10)
    assert answer.status_code == 401
    assert not example.paused("Cust2001")
    base = example.webhook.rsplit("/superoffice/", 1)[0]
    assert requests.get(base + "/health", timeout=10).status_code == 200
    assert requests.get(base + "/elsewhere", timeout=10).status_code == 404


def test_the_web_app_imports_nothing_of_the_worker_side() -> None:
    code = """
import sys
from example_project.vendorapp import web
assert callable(web.application)
worker_side = ["worker", "gate", "app", "admin", "observe", "io.broker.redis_held"]
loaded = [m for m in worker_side if "celery_tenant_gate." + m in sys.modules]
loaded += [m for m in ("celery", "tasks") if "example_project.vendorapp." + m in sys.modules]
print(loaded)
"""
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=processes.ROOT,
        env=processes.app_env(Settings()),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"VENDORAPP_BROKER_URL": "mysql://db/0"}, "VENDORAPP_BROKER_URL"),
        ({"VENDORAPP_REDIS_URL": "http://127.0.0.1:6379"}, "VENDORAPP_REDIS_URL"),
        ({"VENDORAPP_WEB_PORT": "eighty"}, "VENDORAPP_WEB_PORT"),
        ({"VENDORAPP_NAMESPACE": "my app"}, "VENDORAPP_NAMESPACE"),
        ({"VENDORAPP_TENANT_API_VIA": "127.0.0.1:9"}, "VENDORAPP_TENANT_API_VIA"),
    ],
)
def test_a_bad_setting_names_its_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings.from_env(env)


def test_a_bad_gate_setting_names_its_key() -> None:
    with pytest.raises(ConfigError, match="tenant_gate_min_ttl"):
        make_app(Settings.from_env({"VENDORAPP_GATE_MIN_TTL": "soon"}))


def test_settings_survive_the_trip_through_the_environment() -> None:
    settings = Settings.from_env(
        {
            "VENDORAPP_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//",
            "VENDORAPP_REDIS_URL": "redis://127.0.0.1:6379/3",
            "VENDORAPP_NAMESPACE": "acme",
            "VENDORAPP_WEB_PORT": "0",
            "VENDORAPP_GATE_ENVIRONMENT": "sod",
        }
    )
    assert Settings.from_env(settings.to_env()) == settings
    conf = settings.celery_conf()
    assert conf["tenant_gate_environment"] == "sod"
    assert conf["task_default_queue"] == "acme.tasks"
    assert conf["tenant_gate_control_queue"] == "acme.control"


def test_on_rabbitmq_a_worker_holding_tasks_keeps_consuming(amqp_url: str, redis_url: str) -> None:
    """The example app's settings (acks_late, prefetch 1) on RabbitMQ: every held
    task's message is acknowledged at once, so the broker keeps delivering (a deferred
    ack once left the worker idle for seconds after each hold)."""
    ctx = "Cust2009"
    with FakeSuperOffice() as superoffice:
        superoffice.set_state(
            ctx, "Running", valid_for=60, endpoint="https://online9.superoffice.com"
        )
        settings = Settings(
            broker_url=amqp_url,
            redis_url=redis_url,
            namespace=f"tgtest-example-{uuid.uuid4().hex[:8]}",
            gate=gate_settings(superoffice),
        )
        app = make_app(settings)
        gate = gate_for(app)
        worker = processes.worker(settings).start()
        try:
            worker.wait_ready()
            gate.pause(ctx, "by hand")
            for _ in range(10):
                app.tasks[tasks.sync_contacts.name].delay(ctx)
            # One hold takes milliseconds; the stalled worker needed 10 s for each (so
            # 100 s for ten): a bound far above a busy machine's, far below a stall.
            wait_until(lambda: gate.state(ctx).held == 10, timeout=40, what="10 held")
        finally:
            worker.stop()
            gate.states.close()
            forget_namespace(settings, [ctx])
