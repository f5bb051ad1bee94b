"""The tenant session (``celery_tenant_gate.app.session``) against a real local tenant
API host and State API: where requests go, the state check before each, 421, 429,
the retry policy, and that nothing secret is logged."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest
from urllib3.response import HTTPResponse

from celery_tenant_gate.app.session import BoundedRetry, TenantSession, retry_policy
from celery_tenant_gate.gate.lookup import TenantStates
from celery_tenant_gate.gate.sweep import Act, plan
from celery_tenant_gate.model.errors import (
    TenantDeleted,
    TenantMisdirected,
    TenantRateLimited,
    TenantUnavailable,
)
from celery_tenant_gate.testing import FakeSuperOffice, FakeTenantApi, Reply

SECRET = "s3cret-T0KEN-do-not-log"


@pytest.fixture
def host() -> Iterator[FakeTenantApi]:
    with FakeTenantApi() as fake:
        yield fake


@pytest.fixture
def session(
    states: TenantStates, superoffice: FakeSuperOffice, host: FakeTenantApi
) -> Iterator[TenantSession]:
    superoffice.set_state("Cust1", "Running", endpoint=host.base_url)
    with TenantSession("Cust1", states) as made:
        yield made


def test_a_path_goes_to_the_tenants_api(session: TenantSession, host: FakeTenantApi) -> None:
    assert session.get("v1/Contact/5").json() == {"n": 1, "path": "v1/Contact/5"}
    assert session.get("/v1/Person/7").status_code == 200
    assert [s.path for s in host.seen("Cust1")] == ["v1/Contact/5", "v1/Person/7"]
    assert session.api == host.api("Cust1")


def test_contacts_page_by_page_follow_the_next_links(
    session: TenantSession, host: FakeTenantApi
) -> None:
    host.set_contacts("Cust1", 120)
    ids: list[int] = []
    url: str | None = "v1/Contact?$top=50"
    while url:
        page = session.get(url).json()
        ids += [contact["ContactId"] for contact in page["value"]]
        url = page.get("odata.nextLink")
    assert ids == list(range(1, 121))
    assert host.requests("Cust1") == 3


@pytest.mark.parametrize(
    ("state", "error"),
    [("OfflineMaintenance", TenantUnavailable), ("Suspended", TenantUnavailable)],
)
def test_a_tenant_that_does_not_run_gets_no_request(
    states: TenantStates,
    superoffice: FakeSuperOffice,
    host: FakeTenantApi,
    state: str,
    error: type[Exception],
) -> None:
    superoffice.set_state("Cust1", state, endpoint=host.base_url)
    with TenantSession("Cust1", states) as session, pytest.raises(error, match="Cust1"):
        session.get("v1/Contact/5")
    assert host.requests() == 0


def test_a_deleted_tenant_raises_deleted_and_gets_no_request(
    states: TenantStates, superoffice: FakeSuperOffice, host: FakeTenantApi
) -> None:
    superoffice.set_state("Cust1", "Deleted", endpoint=host.base_url)
    with TenantSession("Cust1", states) as session, pytest.raises(TenantDeleted):
        session.get("v1/Contact/5")
    assert host.requests() == 0


def test_a_pause_stops_the_next_request(
    session: TenantSession, states: TenantStates, host: FakeTenantApi
) -> None:
    session.get("v1/Contact/1")
    states.set_paused("Cust1", True, reason="by the test")
    with pytest.raises(TenantUnavailable, match="by the test"):
        session.get("v1/Contact/2")
    assert host.requests("Cust1") == 1


def test_421_refreshes_the_state_and_retries_once_on_the_new_host(
    session: TenantSession, states: TenantStates, superoffice: FakeSuperOffice, host: FakeTenantApi
) -> None:
    session.get("v1/Contact/1")
    with FakeTenantApi() as new:
        superoffice.set_state("Cust1", "Running", endpoint=new.base_url)
        host.misdirect("Cust1")
        assert session.get("v1/Contact/2").json()["path"] == "v1/Contact/2"
        assert [s.status for s in host.seen("Cust1")] == [200, 421]
        assert [s.path for s in new.seen("Cust1")] == ["v1/Contact/2"]
        record = states.store.get("Cust1")  # every worker learns the new Api
        assert record is not None and record.state is not None
        assert record.state.api == new.api("Cust1")
        # an absolute next link on the old host is moved too
        host.misdirect("Cust1", False)
        superoffice.set_state("Cust1", "Running", endpoint=host.base_url)
        new.misdirect("Cust1")
        assert session.get(new.api("Cust1") + "/v1/Contact?$skip=5").status_code == 200
        assert host.seen("Cust1")[-1].path == "v1/Contact?$skip=5"


def test_421_twice_is_a_clear_error_naming_the_tenant_and_both_hosts(
    session: TenantSession, superoffice: FakeSuperOffice, host: FakeTenantApi
) -> None:
    session.get("v1/Contact/1")
    with FakeTenantApi() as new:
        superoffice.set_state("Cust1", "Running", endpoint=new.base_url)
        host.misdirect("Cust1")
        new.misdirect("Cust1")
        with pytest.raises(TenantMisdirected) as caught:
            session.get("v1/Contact/2")
        old_host, new_host = host.base_url[7:], new.base_url[7:]
        assert "Cust1" in str(caught.value)
        assert old_host in str(caught.value) and new_host in str(caught.value)
        assert (host.requests("Cust1"), new.requests("Cust1")) == (2, 1)


def test_a_url_off_the_tenants_api_is_not_moved_on_421(
    session: TenantSession, host: FakeTenantApi
) -> None:
    host.misdirect("Cust2")
    with pytest.raises(TenantMisdirected, match="not under the tenant's Api"):
        session.get(host.base_url + "/Cust2/api/v1/Contact")  # another tenant's path


def test_429_pauses_the_tenant_for_everyone_until_retry_after(
    session: TenantSession, states: TenantStates, host: FakeTenantApi
) -> None:
    host.script("Cust1", Reply(status=429, headers={"Retry-After": "5"}))
    before = time.time()
    with pytest.raises(TenantRateLimited) as caught:
        session.get("v1/Contact/1")
    assert caught.value.retry_after == 5
    record = states.store.get("Cust1")
    assert record is not None and record.paused and record.paused_by == "gate"
    assert before + 5 <= record.resume_not_before <= time.time() + 5
    assert "429" in record.pause_reason
    with pytest.raises(TenantUnavailable):
        session.get("v1/Contact/2")  # nobody sends anything meanwhile
    assert host.requests("Cust1") == 1  # urllib3 did not retry (and sleep) it either
    # the sweep leaves it paused until then, and resumes it afterwards by itself
    policy = states.policy
    assert plan(record, record.resume_not_before - 0.1, policy).act is Act.NOTHING
    assert plan(record, record.resume_not_before + 0.1, policy).act is Act.RESUME


def test_503_is_retried_for_idempotent_methods_only(
    session: TenantSession, host: FakeTenantApi
) -> None:
    host.script("Cust1", Reply(status=503), Reply(status=502))
    assert session.get("v1/Contact/1").status_code == 200
    assert [s.status for s in host.seen("Cust1")] == [503, 502, 200]
    host.script("Cust1", Reply(status=503))
    assert session.post("v1/Contact", json={"Name": "x"}).status_code == 503
    assert host.requests("Cust1") == 4


def test_retries_are_bounded_and_the_last_answer_is_returned(
    session: TenantSession, host: FakeTenantApi
) -> None:
    host.script("Cust1", *[Reply(status=504)] * 5)
    assert session.get("v1/Contact/1").status_code == 504
    assert host.requests("Cust1") == 3  # the first and two retries


def test_the_retry_policy_never_sleeps_long_on_retry_after() -> None:
    policy = retry_policy()
    assert isinstance(policy, BoundedRetry)
    response = HTTPResponse(status=503, headers={"Retry-After": "3600"})
    assert policy.get_retry_after(response) == 5.0
    assert policy.is_retry("GET", 503, has_retry_after=True)
    assert not policy.is_retry("GET", 429, has_retry_after=True)  # 429 pauses the tenant
    assert not policy.is_retry("POST", 503)
    assert not policy.is_retry("PATCH", 502)


def test_nothing_secret_is_logged_or_put_in_an_error(
    session: TenantSession,
    superoffice: FakeSuperOffice,
    host: FakeTenantApi,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    session.headers["Authorization"] = f"Bearer {SECRET}"
    errors: list[Exception] = []
    session.get(f"v1/Contact?token={SECRET}")
    host.script("Cust1", Reply(status=429, headers={"Retry-After": "1"}))
    with pytest.raises(TenantRateLimited) as limited:
        session.get(f"v1/Contact?token={SECRET}")
    errors.append(limited.value)
    session._states.set_paused("Cust1", False)
    host.misdirect("Cust2")
    with pytest.raises(TenantMisdirected) as misdirected:
        session.get(f"http://user:{SECRET}@{host.base_url[7:]}/Cust2/api/v1/Contact?t={SECRET}")
    errors.append(misdirected.value)
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("celery_tenant_gate")]
    assert len(ours) >= 2  # it did log: the request, the pause
    assert all(SECRET not in line for line in ours)
    assert all(SECRET not in str(error) for error in errors)
    # The Authorization header is never logged, by urllib3 either (its DEBUG lines
    # show the URL's path and query: keep tokens out of URLs).
    session.get("v1/Contact/9")
    assert f"Bearer {SECRET}" not in caplog.text


def test_outside_tasks_tenant_session_checks_and_calls_the_same_way(
    redis_url: str, key_prefix: str, superoffice: FakeSuperOffice, host: FakeTenantApi
) -> None:
    import gateapp
    from workers import worker_env

    from celery_tenant_gate import TenantUnavailable as Public
    from celery_tenant_gate import tenant_session
    from celery_tenant_gate.model.errors import InvalidTenantId

    superoffice.set_state("Cust1", "Running", endpoint=host.base_url)
    app = gateapp.make_app(worker_env(redis_url, redis_url, key_prefix, superoffice))
    with tenant_session(app, "Cust1") as session:  # a cold cache: it asks and waits
        assert session.get("v1/Contact/5").json()["path"] == "v1/Contact/5"
        gateapp_states = session._states
        gateapp_states.set_paused("Cust1", True, reason="by the test")
        with pytest.raises(Public, match="Cust1 is not available: by the test"):
            session.get("v1/Contact/6")
    with pytest.raises(InvalidTenantId):
        tenant_session(app, "not a tenant!")
    assert host.requests("Cust1") == 1


def test_an_eager_call_gets_the_exception_there_is_nothing_to_hold(
    redis_url: str, key_prefix: str, superoffice: FakeSuperOffice, host: FakeTenantApi
) -> None:
    import gateapp
    from workers import worker_env

    from celery_tenant_gate import tenant_states

    superoffice.set_state("Cust1", "Running", endpoint=host.base_url)
    app = gateapp.make_app(worker_env(redis_url, redis_url, key_prefix, superoffice))
    calls = app.tasks["gateapp.calls"]
    assert calls.apply(("Cust1", 3)).get() == 3
    tenant_states(app).set_paused("Cust1", True, reason="by the test")
    result = calls.apply(("Cust1", 3))
    assert isinstance(result.result, TenantUnavailable)
    assert host.requests("Cust1") == 3


@pytest.mark.parametrize(
    "error",
    [
        TenantUnavailable("Cust1", "state OfflineMaintenance"),
        TenantDeleted("Cust1", "state Deleted"),
        TenantRateLimited("Cust1", "HTTP 429", 5.0),
        TenantMisdirected("Cust1", "online3", "online7", "421 twice"),
    ],
)
def test_the_errors_survive_a_result_backend(error: Exception) -> None:
    import pickle

    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), str(copy), vars(copy)) == (type(error), str(error), vars(error))
