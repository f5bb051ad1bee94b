"""What `celery tenant-gate` prints, from results built by hand: the text a person reads
and the `--json` documents, literally. No Redis, no clock: ages count from `now`."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from celery_tenant_gate.admin import render
from celery_tenant_gate.admin.errors import EXIT_NOT_FOUND
from celery_tenant_gate.admin.explain import why
from celery_tenant_gate.admin.formatting import duration
from celery_tenant_gate.admin.results import (
    CheckResult,
    HeldResult,
    PausedResult,
    PauseResult,
    PurgeResult,
    ResumeResult,
    StatusResult,
)
from celery_tenant_gate.gate.controls import TenantStatus
from celery_tenant_gate.model.held import HeldMessage
from celery_tenant_gate.model.record import Source, TenantRecord
from celery_tenant_gate.model.states import State, TenantState
from celery_tenant_gate.model.verdicts import Verdict, VerdictPolicy

NOW = 1_700_000_000.0
SERVER = "https://online3.superoffice.com"


def state(ctx: str, name: State, raw: str = "", *, running: bool = False) -> TenantState:
    return TenantState(
        ctx,
        name,
        raw_state=raw or name.api_name,
        is_running=running,
        valid_until=datetime(2023, 11, 14, 22, 18, 20, tzinfo=timezone.utc),
        endpoint=f"{SERVER}/{ctx}",
        api=f"{SERVER}/{ctx}/api",
    )


def status(
    ctx: str,
    verdict: Verdict,
    record: TenantRecord | None,
    held: int = 0,
    dropped: int = 0,
) -> TenantStatus:
    return TenantStatus(ctx, verdict, record, f"q.tenant.{ctx}", held, dropped)


def message(task_id: str, held_at: float | None, holds: int = 1, eta: str = "") -> HeldMessage:
    headers: dict[str, object] = {"id": task_id, "task": "proj.sync", "tenant_gate_held": holds}
    if held_at is not None:
        headers["tenant_gate_held_at"] = held_at
    if eta:
        headers["eta"] = eta
    return HeldMessage(headers, b"[]", "application/json", "utf-8")


PAUSED = TenantRecord(
    "Cust1",
    state("Cust1", State.RUNNING, running=True),
    learnt_at=NOW - 400,
    fresh_until=NOW + 200,
    paused=True,
    pause_reason="data migration",
    paused_at=NOW - 185,
    paused_by="manual",
)


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (-3.0, "0s"),  # another machine's clock ahead: never a negative age
        (0.0, "0s"),
        (59.99, "59s"),
        (60.0, "1m 00s"),
        (3599.0, "59m 59s"),
        (3600.0, "1h 00m"),
        (48 * 3600 - 1, "47h 59m"),
        (48 * 3600, "2d 00h"),
        (10 * 86400 + 5 * 3600 + 59, "10d 05h"),
    ],
)
def test_a_duration_is_two_units_at_most(seconds: float, shown: str) -> None:
    assert duration(seconds) == shown


def test_held_tasks_show_how_long_they_wait_oldest_first() -> None:
    result = HeldResult(
        "Cust1",
        "q.tenant.Cust1",
        7,
        (
            message("a1", NOW - 3 * 86400, holds=4, eta="2023-11-15T08:00:00+00:00"),
            message("b22", NOW - 7322),
            message("c333", NOW - 75),
            message("d4", None),  # held before the header existed
        ),
        NOW,
    )
    assert render.text(result) == (
        "TASK ID  TASK       WAITING  HOLDS  ETA\n"
        "a1       proj.sync  3d 00h   4      2023-11-15T08:00:00+00:00\n"
        "b22      proj.sync  2h 02m   1      -\n"
        "c333     proj.sync  1m 15s   1      -\n"
        "d4       proj.sync  ?        1      -\n"
        "4 of 7 held task(s) of Cust1, oldest first, in queue q.tenant.Cust1."
    )
    assert render.document(result)["messages"][2:] == [
        {
            "task_id": "c333",
            "task_name": "proj.sync",
            "held_at": NOW - 75,
            "age": 75.0,
            "holds": 1,
            "eta": None,
        },
        {
            "task_id": "d4",
            "task_name": "proj.sync",
            "held_at": None,
            "age": None,
            "holds": 1,
            "eta": None,
        },
    ]


def test_nothing_to_show_is_said_in_words_and_is_empty_in_json() -> None:
    nothing = StatusResult((), NOW)
    assert render.text(nothing) == "No paused tenant, no held task."
    assert render.text(StatusResult((), NOW, every=True)) == "No tenant has a record."
    assert render.document(nothing) == {"tenants": []} and nothing.error is None
    assert render.text(PausedResult((), NOW)) == "No tenant is paused."
    assert render.document(PausedResult((), NOW)) == {"tenants": []}
    no_held = HeldResult("Cust1", "q.tenant.Cust1", 0, (), NOW)
    assert render.text(no_held) == "Cust1 has no held task."
    assert render.document(no_held) == {
        "context_id": "Cust1",
        "queue": "q.tenant.Cust1",
        "total": 0,
        "messages": [],
    }


def test_unknown_tenants_asked_for_print_nothing_and_are_one_error() -> None:
    one = StatusResult((), NOW, asked=("Cust8",), unknown=("Cust8",))
    assert render.text(one) == ""  # the error says it all
    assert render.document(one) == {"tenants": []}
    assert one.error is not None and one.error.exit_code == EXIT_NOT_FOUND
    assert str(one.error) == (
        "unknown tenant Cust8: the shared store has no record of it and it has no held or "
        "dropped task (check Cust8 asks the State API)"
    )
    two = StatusResult((), NOW, asked=("Cust8", "Cust9"), unknown=("Cust8", "Cust9"))
    assert str(two.error) == (
        "unknown tenants Cust8, Cust9: the shared store has no record of them and they "
        "have no held or dropped task"
    )


def test_the_status_table_shows_pauses_deletions_and_failed_look_ups() -> None:
    deleted = TenantRecord(
        "Cust2",
        state("Cust2", State.DELETED),
        learnt_at=NOW - 7200,
        deleted=True,
        paused=True,
        paused_at=NOW - 7300,
        paused_by="webhook",
        pause_reason="Delete notification",
    )
    failing = TenantRecord("Cust33", None, error="State API, tenant Cust33: 503", error_at=NOW - 5)
    weird = TenantRecord(
        "Cust4", TenantState("Cust4", State.UNRECOGNISED, raw_state="Hibernating"), learnt_at=NOW
    )
    gone = TenantRecord("Cust5", state("Cust5", State.DELETING), learnt_at=NOW - 60, deleted=True)
    result = StatusResult(
        (
            status("Cust1", Verdict.HOLD, PAUSED, held=3),
            status("Cust2", Verdict.DROP, deleted, dropped=12),
            status("Cust33", Verdict.HOLD, failing, held=1),
            status("Cust4", Verdict.HOLD, weird),
            status("Cust5", Verdict.DROP, gone),
            status("Cust6", Verdict.HOLD, None, held=2),  # held tasks, record gone
        ),
        NOW,
    )
    assert render.text(result).split("\n") == [
        "TENANT  STATE        VERDICT  PAUSED                           HELD  DROPPED  ENDPOINT"
        "                               LAST CHANGE  REASON",
        "Cust1   Running      hold     by manual, 3m 05s ago            3     0        "
        "https://online3.superoffice.com/Cust1  3m 05s ago   data migration",
        "Cust2   Deleted      drop     deleted; by webhook, 2h 01m ago  0     12       "
        "https://online3.superoffice.com/Cust2  2h 00m ago   Delete notification",
        "Cust33  (none)       hold     no                               1     0        -"
        "                                      5s ago",
        "Cust4   Hibernating  hold     no                               0     0        -"
        "                                      0s ago",
        "Cust5   Deleting     drop     deleted                          0     0        "
        "https://online3.superoffice.com/Cust5  1m 00s ago",
        "Cust6   (none)       hold     no                               2     0        -"
        "                                      -",
        "Cust33: the last State API call failed 5s ago: State API, tenant Cust33: 503",
    ]


def test_a_tenant_in_json_has_every_documented_key() -> None:
    assert render.tenant_json(status("Cust1", Verdict.HOLD, PAUSED, held=3)) == {
        "context_id": "Cust1",
        "verdict": "hold",
        "state": "Running",
        "is_running": True,
        "paused": True,
        "pause_reason": "data migration",
        "paused_by": "manual",
        "paused_at": NOW - 185,
        "deleted": False,
        "held": 3,
        "dropped": 0,
        "queue": "q.tenant.Cust1",
        "endpoint": "https://online3.superoffice.com/Cust1",
        "api": "https://online3.superoffice.com/Cust1/api",
        "source": "pull",
        "learnt_at": NOW - 400,
        "fresh_until": NOW + 200,
        "error": "",
        "error_at": None,
        "last_change": NOW - 185,
    }
    # Held tasks of a tenant whose record is gone: nothing but the counts.
    assert render.tenant_json(status("Cust7", Verdict.HOLD, None, held=2)) == {
        "context_id": "Cust7",
        "verdict": "hold",
        "state": None,
        "is_running": None,
        "paused": False,
        "pause_reason": "",
        "paused_by": "",
        "paused_at": None,
        "deleted": False,
        "held": 2,
        "dropped": 0,
        "queue": "q.tenant.Cust7",
        "endpoint": "",
        "api": "",
        "source": None,
        "learnt_at": None,
        "fresh_until": None,
        "error": "",
        "error_at": None,
        "last_change": None,
    }


def test_the_paused_list_says_by_whom_since_when_and_why() -> None:
    unnamed = TenantRecord("Cust22", None, paused=True, paused_at=NOW - 90_000)
    result = PausedResult(
        (status("Cust1", Verdict.HOLD, PAUSED, held=3), status("Cust22", Verdict.HOLD, unnamed)),
        NOW,
    )
    assert render.text(result) == (
        "TENANT  BY      SINCE        HELD  REASON\n"
        "Cust1   manual  3m 05s ago   3     data migration\n"
        "Cust22  ?       25h 00m ago  0"
    )


def test_pause_says_whether_it_changed_anything_and_warns_of_a_new_tenant() -> None:
    new = PauseResult("Cust1", "upgrade", True, False, "upgrade", "manual")
    assert render.text(new) == (
        "Paused Cust1 (upgrade): its tasks are held until resume.\n"
        "Note: Cust1 had no record yet (a typo?)."
    )
    assert render.document(new) == {
        "context_id": "Cust1",
        "paused": True,
        "changed": True,
        "known": False,
        "pause_reason": "upgrade",
        "paused_by": "manual",
    }
    again = PauseResult("Cust1", "later", False, True, "later", "manual")
    assert render.text(again) == "Cust1 was paused already; reason now: later"


def test_resume_says_when_the_tenant_still_holds() -> None:
    runs = ResumeResult("Cust1", True, 3, Verdict.RUN, "state Running runs")
    assert render.text(runs) == "Resumed Cust1: 3 held task(s) released, oldest first."
    assert render.document(runs) == {
        "context_id": "Cust1",
        "was_paused": True,
        "released": 3,
        "verdict": "run",
    }
    holds = ResumeResult("Cust1", False, 0, Verdict.HOLD, "state Suspended holds")
    assert render.text(holds) == (
        "Cust1 was not paused: 0 held task(s) released, oldest first.\n"
        "Its verdict is still hold (state Suspended holds)."
    )


def test_purge_names_where_the_dropped_tasks_are_kept() -> None:
    dropped = PurgeResult("Cust1", 2, 5, "tg:dead:Cust1")
    assert render.text(dropped) == "Dropped 2 held task(s) of Cust1 (kept in Redis: tg:dead:Cust1)."
    assert render.document(dropped) == {
        "context_id": "Cust1",
        "dropped": 2,
        "dropped_total": 5,
        "dead_letter_key": "tg:dead:Cust1",
    }
    nothing = PurgeResult("Cust1", 0, 5, "tg:dead:Cust1")
    assert render.text(nothing) == "Cust1 has no held task: nothing dropped."


def test_check_shows_the_answer_and_the_verdict() -> None:
    record = TenantRecord(
        "Cust1",
        state("Cust1", State.OFFLINE_MAINTENANCE),
        source=Source.PULL,
        learnt_at=NOW,
        fresh_until=NOW + 3600,
    )
    result = CheckResult("Cust1", record, Verdict.HOLD, "state OfflineMaintenance holds", NOW)
    assert render.text(result) == (
        "tenant    Cust1\n"
        "state     OfflineMaintenance (IsRunning: false)\n"
        "valid     5m 00s more (ValidUntil 2023-11-14T22:18:20+00:00)\n"
        "endpoint  https://online3.superoffice.com/Cust1\n"
        "api       https://online3.superoffice.com/Cust1/api\n"
        "verdict   hold: state OfflineMaintenance holds"
    )
    assert render.document(result) == {
        "context_id": "Cust1",
        "state": "OfflineMaintenance",
        "raw_state": "OfflineMaintenance",
        "is_running": False,
        "valid_until": 1_700_000_300.0,
        "endpoint": "https://online3.superoffice.com/Cust1",
        "api": "https://online3.superoffice.com/Cust1/api",
        "paused": False,
        "verdict": "hold",
        "why": "state OfflineMaintenance holds",
    }
    unanswered = CheckResult(
        "Cust1", None, Verdict.HOLD, "no state known; failure policy: hold", NOW
    )
    assert render.text(unanswered) == (
        "tenant    Cust1\n"
        "state     (none) (IsRunning: -)\n"
        "valid     -\n"
        "endpoint  -\n"
        "api       -\n"
        "verdict   hold: no state known; failure policy: hold"
    )


@pytest.mark.parametrize(
    ("record", "said"),
    [
        (None, "no state known; failure policy: hold"),
        (
            TenantRecord("Cust1", None, error="timed out"),
            "no state known (timed out); failure policy: hold",
        ),
        (
            TenantRecord(
                "Cust1", state("Cust1", State.RUNNING, running=True), fresh_until=NOW - 301
            ),
            "the last state known is too old; failure policy: hold",
        ),
        (
            TenantRecord("Cust1", state("Cust1", State.RUNNING, running=True), fresh_until=NOW),
            "state Running runs",
        ),
        (PAUSED, "state Running runs, but paused by manual: data migration"),
        (
            TenantRecord("Cust1", state("Cust1", State.SUSPENDED), fresh_until=NOW, paused=True),
            "state Suspended holds; paused by ?: -",
        ),
        (
            TenantRecord("Cust1", state("Cust1", State.DELETED), fresh_until=NOW),
            "state Deleted drops",
        ),
        (
            TenantRecord("Cust1", state("Cust1", State.DELETED), deleted=True, paused=True),
            "the tenant is taken as deleted: its tasks are dropped",
        ),
    ],
)
def test_why_the_gate_decides_in_a_few_words(record: TenantRecord | None, said: str) -> None:
    assert why(record, VerdictPolicy(), NOW) == said
