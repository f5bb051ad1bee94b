"""`celery -A gateapp tenant-gate ...`: the real command, in a subprocess, against real
Redis, a real worker and the local SuperOffice stand-in.

One worker serves the whole module; each test has tenants of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gateapp
import pytest
import redis
from workers import TESTS, Harness, wait_until, worker_env

from celery_tenant_gate import gate_for
from celery_tenant_gate.admin import render
from celery_tenant_gate.admin.errors import EXIT_NOT_FOUND
from celery_tenant_gate.admin.results import PauseResult, ResumeResult
from celery_tenant_gate.admin.service import TenantAdmin
from celery_tenant_gate.gate.gate import Gate
from celery_tenant_gate.model.verdicts import Verdict
from celery_tenant_gate.testing import FakeSuperOffice

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

_SCRIPT = Path(sys.executable).with_name("celery")
#: The `celery` script the package's entry point is installed for.
CELERY = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "celery"]


class Run:
    """One finished command."""

    def __init__(self, process: subprocess.Popen[str], stdin: str | None) -> None:
        self.stdout, self.stderr = process.communicate(stdin, timeout=60)
        self.code = process.returncode

    def json(self) -> Any:
        assert self.code == 0, self.stderr
        return json.loads(self.stdout)

    def __repr__(self) -> str:
        return f"<exit {self.code}\nstdout: {self.stdout}\nstderr: {self.stderr}>"


def start(env: dict[str, str], *args: str, stdin: str | None = None) -> Any:
    process = subprocess.Popen(
        [*CELERY, "-A", "gateapp", "tenant-gate", *args],
        cwd=TESTS,
        env=env,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return lambda: Run(process, stdin)


def cli(env: dict[str, str], *args: str, stdin: str | None = None) -> Run:
    run: Run = start(env, *args, stdin=stdin)()
    return run


def cli_all(env: dict[str, str], *commands: list[str]) -> list[Run]:
    """Several commands that change nothing, run at once (each is a Python start-up)."""
    pending = [start(env, *command) for command in commands]
    return [finish() for finish in pending]


def clean_failure(run: Run, code: int, *words: str) -> None:
    """A failure says what is wrong on stderr, in one message, without a traceback."""
    assert run.code == code, run
    assert "Traceback" not in run.stderr + run.stdout, run
    for word in words:
        assert word in run.stderr, run


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeSuperOffice]:
    with FakeSuperOffice() as superoffice:
        yield superoffice


@pytest.fixture(scope="module")
def env(redis_url: str, fake: FakeSuperOffice) -> Iterator[dict[str, str]]:
    prefix = f"tgtest:{uuid.uuid4().hex[:12]}"
    yield worker_env(redis_url, redis_url, prefix, fake)
    client = redis.Redis.from_url(redis_url)
    for pattern in (f"{prefix}:*", f"_kombu.binding.{prefix}*"):
        keys = list(client.scan_iter(match=pattern, count=1000))
        if keys:
            client.delete(*keys)
    client.close()


@pytest.fixture(scope="module")
def worker(env: dict[str, str], redis_url: str) -> Iterator[Harness]:
    """One solo worker for the module."""
    harness = Harness(env, redis_url)
    harness.worker("solo")
    yield harness
    harness.stop()


@pytest.fixture(scope="module")
def gate(env: dict[str, str]) -> Gate:
    return gate_for(gateapp.make_app(env))


def send(gate: Gate, ctx: str, count: int) -> list[str]:
    work = gate.app.tasks["gateapp.work"]
    return [work.delay(ctx, n).id for n in range(count)]


def wait_held(gate: Gate, ctx: str, count: int) -> None:
    wait_until(lambda: gate.state(ctx, look_up=False).held == count, what=f"{count} held")


def test_pause_holds_on_the_worker_and_every_view_shows_it_then_resume_releases_in_order(
    env: dict[str, str], worker: Harness, gate: Gate, fake: FakeSuperOffice
) -> None:
    fake.set_state("Cust11", "Running", valid_for=60, endpoint="https://online3.superoffice.com")
    gate.states.refresh("Cust11")
    paused = cli(env, "pause", "Cust11", "--reason", "data migration")
    assert paused.code == 0, paused
    assert "Paused Cust11 (data migration)" in paused.stdout
    ids = send(gate, "Cust11", 3)
    wait_held(gate, "Cust11", 3)  # the worker read the pause the command wrote

    status, status_json, held, held_json, listing, listing_json, every = cli_all(
        env,
        ["status"],  # no CTX: the paused tenants and those with held tasks
        ["status", "Cust11", "--json"],
        ["held", "Cust11"],
        ["held", "Cust11", "--json", "--limit", "2"],
        ["paused"],
        ["paused", "--json"],
        ["status", "--all", "--json"],
    )
    assert status.code == 0, status
    header, *rows = status.stdout.splitlines()
    assert header.split()[:4] == ["TENANT", "STATE", "VERDICT", "PAUSED"]
    (row,) = [row for row in rows if row.startswith("Cust11 ")]
    assert row.split()[:3] == ["Cust11", "Running", "hold"]
    assert "by manual" in row and "data migration" in row
    assert "https://online3.superoffice.com/Cust11" in row

    (tenant,) = status_json.json()["tenants"]
    assert tenant["context_id"] == "Cust11"
    assert (tenant["state"], tenant["is_running"], tenant["verdict"]) == ("Running", True, "hold")
    assert (tenant["paused"], tenant["paused_by"]) == (True, "manual")
    assert tenant["pause_reason"] == "data migration"
    assert (tenant["held"], tenant["dropped"]) == (3, 0)
    assert tenant["endpoint"] == "https://online3.superoffice.com/Cust11"
    assert tenant["source"] == "pull" and tenant["error"] == ""
    assert time.time() - 60 < tenant["paused_at"] <= tenant["last_change"] <= time.time()

    assert held.code == 0, held
    lines = held.stdout.splitlines()
    assert lines[0].split() == ["TASK", "ID", "TASK", "WAITING", "HOLDS", "ETA"]
    assert [line.split()[0] for line in lines[1:4]] == ids  # oldest first
    assert all(line.split()[1] == "gateapp.work" for line in lines[1:4])
    assert "3 of 3 held task(s) of Cust11" in lines[4]

    document = held_json.json()
    assert document["total"] == 3
    assert [m["task_id"] for m in document["messages"]] == ids[:2]
    first = document["messages"][0]
    assert first["task_name"] == "gateapp.work" and first["holds"] == 1
    assert 0 <= first["age"] < 60 and first["eta"] is None

    assert listing.code == 0, listing
    assert ["Cust11", "manual"] in [line.split()[:2] for line in listing.stdout.splitlines()]
    assert "Cust11" in [t["context_id"] for t in listing_json.json()["tenants"]]
    assert "Cust11" in [t["context_id"] for t in every.json()["tenants"]]
    assert [r for r in worker.ran_now() if r["ctx"] == "Cust11"] == []

    resumed = cli(env, "resume", "Cust11", "--json").json()
    assert resumed == {"context_id": "Cust11", "was_paused": True, "released": 3, "verdict": "run"}
    worker.wait_ids(set(ids))
    assert [r["id"] for r in worker.ran_now() if r["ctx"] == "Cust11"] == ids


def test_pause_again_updates_the_reason_and_resume_says_what_it_did(
    env: dict[str, str], gate: Gate, fake: FakeSuperOffice
) -> None:
    fake.set_state("Cust12", "Running", valid_for=60)
    first = cli(env, "pause", "Cust12", "--reason", "first", "--json").json()
    assert first == {
        "context_id": "Cust12",
        "paused": True,
        "changed": True,
        "known": False,
        "pause_reason": "first",
        "paused_by": "manual",
    }
    again = cli(env, "pause", "Cust12", "--reason", "second")
    assert again.code == 0 and "was paused already; reason now: second" in again.stdout
    resumed = cli(env, "resume", "Cust12")
    assert resumed.code == 0, resumed
    assert resumed.stdout.startswith("Resumed Cust12: 0 held task(s) released")
    record = gate.states.store.get("Cust12")
    assert record is not None and not record.paused
    assert "Cust12" not in gate.paused()


def test_purge_asks_first_and_keeps_what_it_drops(
    env: dict[str, str], worker: Harness, gate: Gate, fake: FakeSuperOffice
) -> None:
    fake.set_state("Cust13", "Running", valid_for=60)
    gate.pause("Cust13", "to purge")
    ids = send(gate, "Cust13", 2)
    wait_held(gate, "Cust13", 2)

    declined = cli(env, "purge", "Cust13", stdin="n\n")
    clean_failure(declined, 1, "Drop the 2 held task(s) of Cust13?", "nothing was dropped")
    assert gate.state("Cust13", look_up=False).held == 2

    agreed = cli(env, "purge", "Cust13", stdin="y\n")
    assert agreed.code == 0, agreed
    assert agreed.stdout.startswith("Dropped 2 held task(s) of Cust13")
    assert {letter.task_id for letter in gate.dead.list("Cust13")} == set(ids)

    ids += send(gate, "Cust13", 1)
    wait_held(gate, "Cust13", 1)
    document = cli(env, "purge", "Cust13", "--yes", "--json").json()
    assert document == {
        "context_id": "Cust13",
        "dropped": 1,
        "dropped_total": 3,
        "dead_letter_key": gate.dead.key("Cust13"),
    }
    assert {letter.task_id for letter in gate.dead.list("Cust13")} == set(ids)
    status = gate.state("Cust13", look_up=False)
    assert status.held == 0 and status.record is not None and status.record.paused
    assert [r for r in worker.ran_now() if r["ctx"] == "Cust13"] == []


def test_check_asks_the_state_api_now_and_says_what_the_gate_decides(
    env: dict[str, str], gate: Gate, fake: FakeSuperOffice
) -> None:
    fake.set_state("Cust14", "Running", valid_for=3600)
    gate.states.refresh("Cust14")  # stored as Running, valid for a long time
    fake.set_state(
        "Cust14", "OfflineMaintenance", valid_for=60, endpoint="https://online5.superoffice.com"
    )
    calls = fake.calls("Cust14")
    fake.not_found("Cust404")  # the State API at a wrong URL
    api_down = {**env, "GATE_STATE_API": "http://127.0.0.1:9/api/state"}
    runs = [
        start(env, "check", "Cust14"),
        start(env, "check", "Cust14", "--json"),
        start(env, "check", "Cust404"),
        start(api_down, "check", "Cust14"),
    ]
    text, document, unknown, down = (finish() for finish in runs)

    assert text.code == 0, text
    assert "state     OfflineMaintenance (IsRunning: false)" in text.stdout
    assert "verdict   hold: state OfflineMaintenance holds" in text.stdout
    answer = document.json()
    assert answer["state"] == "OfflineMaintenance" and answer["is_running"] is False
    assert answer["verdict"] == "hold" and answer["paused"] is False
    assert answer["endpoint"] == "https://online5.superoffice.com/Cust14"
    assert time.time() + 30 < answer["valid_until"] < time.time() + 90
    assert fake.calls("Cust14") == calls + 2  # not answered from the store
    record = gate.states.store.get("Cust14")
    assert record is not None and record.state is not None
    assert record.state.state.api_name == "OfflineMaintenance"  # stored for the workers

    # SuperOffice answers State Unknown for a tenant it does not know: a 404 is a wrong URL.
    clean_failure(unknown, 3, "HTTP 404", "/api/state/Cust404", "tenant_gate_state_api_url")
    clean_failure(down, 3, "State API, tenant Cust14", "connection failed")


def test_the_service_returns_data_and_the_command_prints_it_rendered(
    env: dict[str, str], gate: Gate, fake: FakeSuperOffice
) -> None:
    fake.set_state("Cust15", "Suspended", valid_for=600)
    gate.states.refresh("Cust15")
    admin = TenantAdmin(gate.app, clock=lambda: 1_900_000_000.0)

    paused = admin.pause("Cust15", "audit")
    assert paused == PauseResult("Cust15", "audit", True, True, "audit", "manual")
    found = admin.status(["Cust15", "Cust16", "Cust15"])
    (status,) = found.tenants
    assert (status.context_id, status.verdict, status.held) == ("Cust15", Verdict.HOLD, 0)
    assert status.record is not None and status.record.pause_reason == "audit"
    assert (found.asked, found.unknown, found.now) == (("Cust15", "Cust16"), ("Cust16",), 1.9e9)
    assert found.error is not None and found.error.exit_code == EXIT_NOT_FOUND
    printed = cli(env, "status", "Cust15", "--json").json()
    assert printed == render.document(admin.status(["Cust15"]))

    resumed = admin.resume("Cust15")  # the clock is far ahead: the state is too old
    why = "the last state known is too old; failure policy: hold"
    assert resumed == ResumeResult("Cust15", True, 0, Verdict.HOLD, why)


def test_bad_input_is_named_and_changes_nothing(env: dict[str, str], gate: Gate) -> None:
    bogus, injected, unknown, unknown_json, purged, no_reason, what = cli_all(
        env,
        ["status", "Bogus1"],
        ["pause", "Cust1;FLUSHALL", "--reason", "x"],
        ["status", "Cust999"],
        ["held", "Cust998", "--json"],
        ["purge", "Cust997", "--yes"],
        ["pause", "Cust996"],
        ["explode"],
    )
    clean_failure(bogus, 1, "malformed tenant id 'Bogus1'")
    clean_failure(injected, 1, "malformed tenant id 'Cust1;FLUSHALL'")
    clean_failure(unknown, 2, "unknown tenant Cust999")
    clean_failure(unknown_json, 2, "unknown tenant Cust998")
    clean_failure(purged, 2, "unknown tenant Cust997")
    clean_failure(no_reason, 1, "Missing option '--reason'")
    clean_failure(what, 1, "No such command 'explode'")
    assert [run.stdout for run in (bogus, injected, unknown, unknown_json, purged)] == [""] * 5
    for ctx in ("Cust999", "Cust998", "Cust997", "Cust996"):
        assert gate.states.store.get(ctx) is None
    assert not set(gate.paused()) & {"Cust1;FLUSHALL", "Cust996"}


def test_no_connection_names_the_url_without_its_password(env: dict[str, str]) -> None:
    redis_down = {**env, "GATE_REDIS": "redis://:s3cret@127.0.0.1:1/0"}
    redis_down["GATE_BROKER"] = redis_down["GATE_REDIS"]
    broker_down = {**env, "GATE_BROKER": "amqp://guest:s3cret@127.0.0.1:1//"}
    runs = [
        start(redis_down, "status", "Cust1"),
        start(redis_down, "pause", "Cust1", "--reason", "x", "--json"),
        start(broker_down, "held", "Cust11"),
    ]
    status, paused, held = (finish() for finish in runs)
    for run in (status, paused):
        clean_failure(run, 3, "cannot connect to Redis at redis://:**@127.0.0.1:1/0")
    clean_failure(held, 3, "cannot connect to the broker at amqp://guest:**@127.0.0.1:1//")
    for run in (status, paused, held):
        assert "s3cret" not in run.stdout + run.stderr
        assert run.stdout == ""


def test_only_the_command_imports_the_cli_module() -> None:
    code = """
import sys
from celery import Celery
import celery_tenant_gate
from celery_tenant_gate import install
from celery_tenant_gate.web.wsgi import make_wsgi_app
app = Celery("web", broker="redis://127.0.0.1:1/0", set_as_current=False)
make_wsgi_app(app); install(app)
print("celery_tenant_gate.admin.cli" in sys.modules)
"""
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ},
    )
    assert result.stdout.strip() == "False", result.stderr
