import pytest

from celery_tenant_gate.model.record import TenantRecord
from celery_tenant_gate.model.states import State, TenantState
from celery_tenant_gate.model.verdicts import DEFAULT_VERDICTS, Verdict, VerdictPolicy

EXPECTED = {
    State.UNKNOWN: Verdict.HOLD,
    State.PROVISIONING: Verdict.HOLD,
    State.RUNNING: Verdict.RUN,
    State.DELETED: Verdict.DROP,
    State.SUSPENDED: Verdict.HOLD,
    State.ONLINE_MAINTENANCE: Verdict.RUN,
    State.OFFLINE_MAINTENANCE: Verdict.HOLD,
    State.PROVISIONING_FAILED: Verdict.HOLD,
    State.DELETING: Verdict.DROP,
    State.DELETE_FAILED: Verdict.DROP,
    State.MIGRATION_PENDING: Verdict.HOLD,
    State.UNRECOGNISED: Verdict.HOLD,
}


def _state(state: State, running: bool | None = None) -> TenantState:
    return TenantState("Cust1", state, is_running=state.is_running if running is None else running)


def _record(state: TenantState | None, **kw: object) -> TenantRecord:
    defaults: dict[str, object] = {"fresh_until": 1000.0, "check_after": 1000.0}
    defaults.update(kw)
    return TenantRecord("Cust1", state, **defaults)  # type: ignore[arg-type]


def test_the_default_table_covers_every_state() -> None:
    assert set(DEFAULT_VERDICTS) == set(State)


@pytest.mark.parametrize(("state", "verdict"), EXPECTED.items())
def test_default_verdicts_follow_superoffice_advice(state: State, verdict: Verdict) -> None:
    assert VerdictPolicy().decide(_record(_state(state)), now=500.0) is verdict


def test_overrides_per_state() -> None:
    policy = VerdictPolicy(verdicts={**DEFAULT_VERDICTS, State.DELETING: Verdict.HOLD})
    assert policy.decide(_record(_state(State.DELETING)), now=500.0) is Verdict.HOLD


def test_a_run_verdict_needs_is_running() -> None:
    assert VerdictPolicy().decide(_record(_state(State.RUNNING, False)), 500.0) is Verdict.HOLD


def test_paused_holds_a_running_tenant_but_still_drops_a_deleted_one() -> None:
    policy = VerdictPolicy()
    assert policy.decide(_record(_state(State.RUNNING), paused=True), 500.0) is Verdict.HOLD
    assert policy.decide(_record(_state(State.DELETED), paused=True), 500.0) is Verdict.DROP


def test_nothing_known_follows_the_failure_policy() -> None:
    assert VerdictPolicy().decide(None, 500.0) is Verdict.HOLD
    assert VerdictPolicy(failure_verdict=Verdict.RUN).decide(None, 500.0) is Verdict.RUN
    assert VerdictPolicy().decide(_record(None, error="down"), 500.0) is Verdict.HOLD


def test_a_stale_state_is_used_within_the_grace_period_only() -> None:
    policy = VerdictPolicy(grace_period=60.0, failure_verdict=Verdict.HOLD)
    record = _record(_state(State.RUNNING), fresh_until=1000.0, error="HTTP 503")
    assert policy.decide(record, now=1059.0) is Verdict.RUN
    assert policy.decide(record, now=1061.0) is Verdict.HOLD


def test_while_a_paused_tenant_is_resumed_its_released_tasks_run_and_new_ones_wait() -> None:
    policy = VerdictPolicy()
    running = _state(State.RUNNING)
    resuming = _record(running, paused=True, resuming=500.0)
    assert policy.decide(resuming, 10.0, released=True) is Verdict.RUN
    assert policy.decide(resuming, 10.0) is Verdict.HOLD  # a new task: behind them
    # Paused, no resume under way: a task held before waits like any other.
    paused = _record(running, paused=True)
    assert policy.decide(paused, 10.0, released=True) is Verdict.HOLD
    # A resume does not make a state that holds run, nor a deleted tenant.
    suspended = _record(_state(State.SUSPENDED), paused=True, resuming=500.0)
    assert policy.decide(suspended, 10.0, released=True) is Verdict.HOLD
    deleted = _record(running, paused=True, resuming=500.0, deleted=True)
    assert policy.decide(deleted, 10.0, released=True) is Verdict.DROP
