"""The one-command demo, run as a user runs it (short mode), and its bookkeeping."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from example_project.demo.accounting import Move, Pause, Published, account

ROOT = Path(__file__).parent.parent


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_the_demo_accounts_for_every_task(tmp_path: Path) -> None:
    summary_file = tmp_path / "summary.json"
    command = [sys.executable, "-m", "example_project.demo", "--quick", "--json", str(summary_file)]
    url = os.environ.get("TENANT_GATE_TEST_REDIS_URL")
    if url:  # the machine's Redis as broker and store; else an embedded one
        command += ["--redis", url, "--broker", url]
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=140, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    summary = json.loads(summary_file.read_text())
    assert summary["ok"] is True
    assert summary["lost"] == 0
    assert summary["published"] == summary["run"] + summary["dropped"] > 0
    assert summary["run_while_paused"] == 0
    assert summary["released_out_of_order"] == 0
    assert summary["stale_endpoint"] == 0
    assert summary["held_at_end"] == 0
    tenants = summary["tenants"]
    assert tenants["Cust1001"]["released"] > 0  # the upgraded tenant's tasks waited
    assert tenants["Cust1003"]["dropped"] > 0  # the deleted tenant's were dropped
    for counts in tenants.values():
        assert counts["published"] == counts["run"] + counts["dropped"]
    for line in ("Upgrade notification", "Delete notification", "Move notification", "Summary"):
        assert line in output
    assert "Everything the demo started is stopped." in output


def _published(*specs: tuple[str, str | None, int]) -> list[Published]:
    return [Published(task_id, "t", ctx, seq, 0.0) for task_id, ctx, seq in specs]


def _ran(task_id: str, ctx: str | None, started: float, **fields: object) -> dict[str, object]:
    return {"id": task_id, "ctx": ctx, "started": started, "api": "", **fields}


def test_a_task_neither_run_nor_dropped_is_lost() -> None:
    published = _published(("a", "Cust1", 0), ("b", "Cust1", 1), ("c", None, 0))
    summary = account(published, [_ran("a", "Cust1", 1.0)], dropped={"Cust1": [{"id": "c"}]})
    assert (summary.run, summary.dropped, summary.lost) == (1, 1, 1)
    assert not summary.ok


def test_a_failed_attempt_is_not_a_run() -> None:
    published = _published(("a", "Cust1", 0))
    summary = account(published, [_ran("a", "Cust1", 1.0, error="421")])
    assert (summary.run, summary.failed_attempts, summary.lost) == (0, 1, 1)


def test_a_body_started_inside_a_pause_is_counted() -> None:
    published = _published(("a", "Cust1", 0), ("b", "Cust1", 1), ("c", "Cust2", 0))
    runs = [_ran("a", "Cust1", 5.0), _ran("b", "Cust1", 11.0), _ran("c", "Cust2", 5.0)]
    summary = account(published, runs, pauses=[Pause("Cust1", 4.0, 10.0, "Upgrade")])
    assert summary.run_while_paused == 1
    assert not summary.ok
    summary = account(published, runs, pauses=[Pause("Cust1", 6.0, None, "Delete")])
    assert summary.run_while_paused == 1
    # Started within the time a pause takes to reach the workers: not while paused.
    summary = account(published, runs, pauses=[Pause("Cust1", 4.99, 10.0, "Upgrade")])
    assert summary.run_while_paused == 0
    # A released task starts while its tenant is being resumed, still paused.
    runs = [_ran("a", "Cust1", 5.0, held=1), _ran("b", "Cust1", 11.0)]
    summary = account(published, runs, pauses=[Pause("Cust1", 4.0, 10.0, "Upgrade")])
    assert summary.run_while_paused == 0


def test_released_tasks_out_of_publish_order_are_counted() -> None:
    published = _published(("a", "Cust1", 0), ("b", "Cust1", 1), ("c", "Cust1", 2))
    runs = [
        _ran("b", "Cust1", 1.0, held=1),
        _ran("a", "Cust1", 2.0, held=1),
        _ran("c", "Cust1", 3.0),
    ]
    summary = account(published, runs)
    assert (summary.released, summary.released_out_of_order) == (2, 1)
    assert not summary.ok


def test_a_call_to_the_old_server_after_a_move_is_stale() -> None:
    published = _published(("a", "Cust1", 0), ("b", "Cust1", 1))
    runs = [
        _ran("a", "Cust1", 1.0, api="https://online1.superoffice.com/Cust1/api"),
        _ran("b", "Cust1", 3.0, api="https://online1.superoffice.com/Cust1/api"),
    ]
    move = Move("Cust1", "online1.superoffice.com", "online7.superoffice.com", 2.0)
    assert account(published, runs, moves=[move]).stale_endpoint == 1
