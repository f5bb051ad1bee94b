"""What the sweep decides for a tenant (:func:`~celery_tenant_gate.gate.sweep.plan`):
a record and the time in, an action out. No Redis, no clock: each case is a literal
record at ``NOW``."""

from __future__ import annotations

from dataclasses import replace

from celery_tenant_gate.gate.sweep import Act, SweepAction, idle_tenants, plan
from celery_tenant_gate.model.record import TenantRecord
from celery_tenant_gate.model.states import State, TenantState
from celery_tenant_gate.model.verdicts import VerdictPolicy

NOW = 10_000.0
POLICY = VerdictPolicy()  # Running runs, Suspended holds, Deleting drops
RUNNING = TenantState("Cust1", State.RUNNING, is_running=True)
SUSPENDED = TenantState("Cust1", State.SUSPENDED)
DELETING = TenantState("Cust1", State.DELETING)
#: Learnt before NOW, fresh until after it.
LEARNT, FRESH_UNTIL = NOW - 100, NOW + 100


def test_nothing_known_nothing_done() -> None:
    assert plan(None, NOW, POLICY) == SweepAction(Act.NOTHING)


def test_a_deleted_tenant_has_its_held_work_dropped() -> None:
    # Deleted wins over a state that runs and a manual pause.
    record = TenantRecord(
        "Cust1",
        RUNNING,
        learnt_at=LEARNT,
        fresh_until=FRESH_UNTIL,
        paused=True,
        paused_by="manual",
        paused_at=LEARNT,
        deleted=True,
    )
    assert plan(record, NOW, POLICY) == SweepAction(Act.PURGE_DELETED, "tenant deleted")


def test_an_unconfirmed_delete_drops_nothing_once_its_wait_is_over() -> None:
    # A Delete notification paused it; the State API still says it runs.
    record = TenantRecord(
        "Cust1",
        RUNNING,
        learnt_at=LEARNT,
        fresh_until=FRESH_UNTIL,
        paused=True,
        paused_by="webhook",
        paused_at=LEARNT - 10,
        resume_not_before=NOW + 60,
        delete_after=NOW,
    )
    # The wait is ended (not a deletion: MARK_DELETED and the purges are the drops)...
    assert plan(record, NOW, POLICY) == SweepAction(Act.DELETE_UNCONFIRMED, "Delete")
    # ...a moment before, it is still waiting...
    assert plan(record, NOW - 1, POLICY) == SweepAction(Act.NOTHING)
    # ...and once ended, the tenant follows its state: it runs, so it resumes.
    ended = replace(record, delete_after=0.0, resume_not_before=0.0)
    assert plan(ended, NOW, POLICY) == SweepAction(Act.RESUME)


def test_a_notification_pause_waits_for_its_minimum_time() -> None:
    # Paused by an Upgrade notification after the State API last said Running.
    record = TenantRecord(
        "Cust1",
        RUNNING,
        learnt_at=LEARNT,
        fresh_until=FRESH_UNTIL,
        paused=True,
        paused_by="webhook",
        paused_at=LEARNT - 10,
        resume_not_before=NOW + 1,
    )
    assert plan(record, NOW, POLICY) == SweepAction(Act.NOTHING)
    assert plan(record, NOW + 1, POLICY) == SweepAction(Act.RESUME)


def test_a_manual_pause_is_never_ended_by_the_sweep() -> None:
    record = TenantRecord(
        "Cust1",
        RUNNING,
        learnt_at=LEARNT,
        fresh_until=FRESH_UNTIL,
        paused=True,
        paused_by="manual",
        paused_at=LEARNT - 10,
    )
    assert plan(record, NOW, POLICY) == SweepAction(Act.NOTHING)


def test_a_notification_pause_newer_than_the_state_asks_for_a_fresh_answer() -> None:
    # The state (Running) was learnt before the notification paused it: not evidence.
    record = TenantRecord(
        "Cust1",
        RUNNING,
        learnt_at=LEARNT,
        fresh_until=FRESH_UNTIL,
        paused=True,
        paused_by="webhook",
        paused_at=LEARNT + 10,
        resume_not_before=NOW - 1,
    )
    assert plan(record, NOW, POLICY) == SweepAction(Act.REFRESH)
    # The fresh answer is followed as it is, whatever its times say.
    assert plan(record, NOW, POLICY, refreshed=True) == SweepAction(Act.RESUME)
    # An answer learnt as the notification came is recent enough.
    learnt_then = replace(record, learnt_at=record.paused_at)
    assert plan(learnt_then, NOW, POLICY) == SweepAction(Act.RESUME)


def test_a_tenant_paused_by_the_gate_resumes_when_its_state_runs() -> None:
    record = TenantRecord(
        "Cust1",
        RUNNING,
        learnt_at=LEARNT,
        fresh_until=FRESH_UNTIL,
        paused=True,
        paused_by="gate",
        paused_at=LEARNT + 10,
        pause_reason="state Suspended",
    )
    assert plan(record, NOW, POLICY) == SweepAction(Act.RESUME)


def test_a_running_tenant_has_its_stragglers_released_if_any_are_held() -> None:
    record = TenantRecord("Cust1", RUNNING, learnt_at=LEARNT, fresh_until=FRESH_UNTIL)
    assert plan(record, NOW, POLICY) == SweepAction(Act.COUNT_HELD)
    assert plan(record, NOW, POLICY, held=0) == SweepAction(Act.NOTHING)
    assert plan(record, NOW, POLICY, held=3) == SweepAction(Act.RELEASE)


def test_a_paused_tenant_whose_state_drops_is_taken_as_deleted() -> None:
    record = TenantRecord(
        "Cust1",
        DELETING,
        learnt_at=LEARNT,
        fresh_until=FRESH_UNTIL,
        paused=True,
        paused_by="gate",
        paused_at=LEARNT - 10,
    )
    assert plan(record, NOW, POLICY) == SweepAction(Act.MARK_DELETED, "state Deleting")


def test_a_tenant_with_a_delete_announced_whose_state_drops_is_taken_as_deleted() -> None:
    # Not paused (resumed by hand after the Delete notification); its wait not over.
    record = TenantRecord(
        "Cust1",
        DELETING,
        learnt_at=LEARNT,
        fresh_until=FRESH_UNTIL,
        delete_after=NOW + 60,
    )
    assert plan(record, NOW, POLICY) == SweepAction(Act.MARK_DELETED, "state Deleting")


def test_a_tenant_not_paused_whose_state_drops_has_its_held_work_dropped() -> None:
    record = TenantRecord("Cust1", DELETING, learnt_at=LEARNT, fresh_until=FRESH_UNTIL)
    assert plan(record, NOW, POLICY) == SweepAction(Act.PURGE, "tenant dropped: state Deleting")


def test_a_tenant_whose_state_holds_stays_as_it_is() -> None:
    record = TenantRecord(
        "Cust1",
        SUSPENDED,
        learnt_at=LEARNT,
        fresh_until=FRESH_UNTIL,
        paused=True,
        paused_by="gate",
        paused_at=LEARNT + 10,
    )
    assert plan(record, NOW, POLICY) == SweepAction(Act.NOTHING)


def test_tenant_queues_idle_past_the_forget_time_are_forgotten() -> None:
    last_held = {"Cust1": NOW - 61, "Cust2": NOW - 60, "Cust3": NOW}
    assert idle_tenants(last_held, NOW, forget_after=60) == ["Cust1"]


def test_a_resume_under_way_is_finished_whoever_paused_the_tenant() -> None:
    # Its releaser may have died: the sweep finishes it (if no one else is moving the
    # tenant's tasks, which the runner finds out), a manual pause too: it was resumed
    # by hand. Whatever its state says: the resume was asked for.
    for paused_by, state in (("manual", RUNNING), ("gate", SUSPENDED), ("webhook", RUNNING)):
        record = TenantRecord(
            "Cust1",
            state,
            learnt_at=LEARNT,
            fresh_until=FRESH_UNTIL,
            paused=True,
            paused_by=paused_by,
            paused_at=NOW - 50,
            resuming=NOW - 3,
        )
        assert plan(record, NOW, POLICY) == SweepAction(Act.RESUME), paused_by
        # Killed after the unpause: what was held in between is still to release.
        assert plan(replace(record, paused=False), NOW, POLICY) == SweepAction(Act.RESUME)
        # Without the mark, the manual pause stands.
        if paused_by == "manual":
            assert plan(replace(record, resuming=0.0), NOW, POLICY) == SweepAction(Act.NOTHING)


def test_a_deletion_wins_over_a_resume_under_way() -> None:
    record = TenantRecord("Cust1", RUNNING, paused=True, resuming=NOW - 3, deleted=True)
    assert plan(record, NOW, POLICY) == SweepAction(Act.PURGE_DELETED, "tenant deleted")
