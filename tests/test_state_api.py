"""The State API client against a real local HTTP server playing SuperOffice."""

import json
import socket
import threading
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import Any

import pytest
import requests

from celery_tenant_gate.io.superoffice.circuit import CircuitBreaker
from celery_tenant_gate.io.superoffice.state_api import MAX_RETRY_AFTER, StateClient
from celery_tenant_gate.model.errors import (
    CircuitOpen,
    InvalidTenantId,
    StateAPIError,
    StateAPINotFound,
    StateAPIResponseError,
    StateAPIStatusError,
    StateAPIUnavailable,
    TenantMismatch,
)
from celery_tenant_gate.model.states import State
from celery_tenant_gate.testing import FakeSuperOffice, Reply


class RecordedSleep:
    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture
def sleeps() -> RecordedSleep:
    return RecordedSleep()


@pytest.fixture
def client(superoffice: FakeSuperOffice, sleeps: RecordedSleep) -> StateClient:
    return StateClient(
        superoffice.state_api_url,
        retries=2,
        backoff=0.5,
        backoff_max=10.0,
        read_timeout=2.0,
        sleep=sleeps,
    )


def test_reads_the_state(client: StateClient, superoffice: FakeSuperOffice) -> None:
    superoffice.set_state("Cust1", "OfflineMaintenance", valid_for=120)
    state = client.get("Cust1")
    assert state.state is State.OFFLINE_MAINTENANCE
    assert not state.running
    assert state.endpoint.endswith("/Cust1")
    assert state.valid_until is not None
    assert 110 < state.valid_until.timestamp() - time.time() <= 120
    assert superoffice.calls("Cust1") == 1


def test_a_404_is_a_wrong_url_not_an_unknown_tenant(
    client: StateClient, superoffice: FakeSuperOffice
) -> None:
    superoffice.script("Cust1", Reply(status=404))
    with pytest.raises(StateAPINotFound) as caught:
        client.get("Cust1")
    message = str(caught.value)
    assert f"{superoffice.state_api_url}/Cust1" in message
    assert "tenant_gate_state_api_url" in message and "tenant_gate_environment" in message
    assert caught.value.status == 404
    assert superoffice.calls("Cust1") == 1  # not retried: the same URL answers the same


def test_a_tenant_superoffice_does_not_know_is_a_state_not_a_failure(
    superoffice: FakeSuperOffice,
) -> None:
    superoffice.set_state("Cust9", "Unknown")
    client = StateClient(superoffice.state_api_url, breaker=CircuitBreaker(1, 60.0))
    assert client.get("Cust9").state is State.UNKNOWN
    assert client.get("Cust9").state is State.UNKNOWN  # the breaker counted no failure
    # A tenant the fake was never told about: its answer, as SuperOffice's.
    never = client.get("Cust10")
    assert (never.state, never.is_running, never.endpoint) == (State.UNKNOWN, False, "")
    assert never.valid_until is not None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<html>Service Unavailable</html>", "not JSON"),
        (b"", "not JSON"),
        (b"[1, 2]", "wrong shape"),
        (b'{"ContextIdentifier": "Cust1", "State": {"x": 1}}', "State"),
        (b'{"State": "Running"}', "ContextIdentifier"),
    ],
)
def test_garbage_is_a_response_error(
    client: StateClient, superoffice: FakeSuperOffice, body: bytes, message: str
) -> None:
    superoffice.set_state("Cust1")
    superoffice.script("Cust1", Reply(body=body))
    with pytest.raises(StateAPIResponseError, match=message):
        client.get("Cust1")


def test_an_answer_about_another_tenant_is_a_mismatch(
    client: StateClient, superoffice: FakeSuperOffice
) -> None:
    superoffice.set_document("Cust1", {"ContextIdentifier": "Cust2", "State": "Running"})
    with pytest.raises(TenantMismatch, match="Cust2"):
        client.get("Cust1")


def test_an_oversized_answer_is_refused(client: StateClient, superoffice: FakeSuperOffice) -> None:
    superoffice.set_state("Cust1")
    superoffice.script("Cust1", Reply(body=b"[" + b"1," * 100_000 + b"1]"))
    with pytest.raises(StateAPIResponseError, match="larger than"):
        client.get("Cust1")


@pytest.mark.parametrize("bad", ["../admin", "Cust1/../../x", "Cust1?debug=1", ""])
def test_malformed_ids_never_reach_the_server(
    client: StateClient, superoffice: FakeSuperOffice, bad: str
) -> None:
    with pytest.raises(InvalidTenantId):
        client.get(bad)
    assert superoffice.calls() == 0


def test_retries_5xx_with_exponential_backoff(
    client: StateClient, superoffice: FakeSuperOffice, sleeps: RecordedSleep
) -> None:
    superoffice.set_state("Cust1")
    superoffice.script("Cust1", Reply(status=502), Reply(status=503))
    assert client.get("Cust1").running
    assert superoffice.calls("Cust1") == 3
    assert sleeps.delays == [0.5, 1.0]


def test_honours_retry_after_on_429(
    client: StateClient, superoffice: FakeSuperOffice, sleeps: RecordedSleep
) -> None:
    superoffice.set_state("Cust1")
    superoffice.script("Cust1", Reply(status=429, headers={"Retry-After": "3"}))
    assert client.get("Cust1").running
    assert sleeps.delays == [3.0]


def test_a_retry_after_beyond_the_cap_gives_up_at_once_and_says_when(
    client: StateClient, superoffice: FakeSuperOffice, sleeps: RecordedSleep
) -> None:
    superoffice.set_state("Cust1")
    superoffice.script("Cust1", Reply(status=503, headers={"Retry-After": "120"}))
    with pytest.raises(StateAPIUnavailable) as caught:
        client.get("Cust1")
    assert caught.value.retry_after == 120.0
    assert sleeps.delays == []


def test_gives_up_after_the_retries(
    client: StateClient, superoffice: FakeSuperOffice, sleeps: RecordedSleep
) -> None:
    superoffice.set_state("Cust1")
    superoffice.script("Cust1", *[Reply(status=500)] * 3)
    with pytest.raises(StateAPIUnavailable, match="HTTP 500"):
        client.get("Cust1")
    assert superoffice.calls("Cust1") == 3


def test_other_statuses_are_not_retried(client: StateClient, superoffice: FakeSuperOffice) -> None:
    superoffice.set_state("Cust1")
    superoffice.script("Cust1", Reply(status=403))
    with pytest.raises(StateAPIStatusError, match="403"):
        client.get("Cust1")
    assert superoffice.calls("Cust1") == 1


def test_read_timeout_is_unavailable(superoffice: FakeSuperOffice) -> None:
    superoffice.set_state("Cust1", delay=1.0)
    client = StateClient(superoffice.state_api_url, retries=0, read_timeout=0.2)
    with pytest.raises(StateAPIUnavailable, match="timed out"):
        client.get("Cust1")


def test_connection_refused_is_unavailable(sleeps: RecordedSleep) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = StateClient(f"http://127.0.0.1:{port}/api/state", retries=1, sleep=sleeps)
    with pytest.raises(StateAPIUnavailable, match="connection failed"):
        client.get("Cust1")
    assert sleeps.delays == [0.5]


def test_the_circuit_opens_and_then_fails_fast(superoffice: FakeSuperOffice) -> None:
    superoffice.set_state("Cust1")
    superoffice.script("Cust1", *[Reply(status=503)] * 3)
    client = StateClient(
        superoffice.state_api_url, retries=0, breaker=CircuitBreaker(3, reset_timeout=60)
    )
    for _ in range(3):
        with pytest.raises(StateAPIUnavailable):
            client.get("Cust1")
    with pytest.raises(CircuitOpen) as caught:
        client.get("Cust1")
    assert superoffice.calls("Cust1") == 3  # the fourth call never left the process
    assert caught.value.retry_after is not None and caught.value.retry_after > 50


# -- the circuit breaker counts every failure kind ------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _in(seconds: float) -> str:
    """A ``Retry-After`` HTTP date *seconds* from now."""
    return formatdate(time.time() + seconds, usegmt=True)


def _nothing_listens() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/api/state"


_ANOTHER_TENANT = json.dumps({"ContextIdentifier": "Cust2", "State": "Running"}).encode()

#: Each way the State API can fail: what the fake answers (None: nothing listens), the
#: error, words of its message.
FAILURES: dict[str, tuple[Callable[[], Reply | None], type[StateAPIError], str]] = {
    "500": (lambda: Reply(status=500), StateAPIUnavailable, "HTTP 500"),
    "502": (lambda: Reply(status=502), StateAPIUnavailable, "HTTP 502"),
    "503": (lambda: Reply(status=503), StateAPIUnavailable, "HTTP 503"),
    "504": (lambda: Reply(status=504), StateAPIUnavailable, "HTTP 504"),
    "timeout": (lambda: Reply(delay=1.0), StateAPIUnavailable, "timed out"),
    "refused": (lambda: None, StateAPIUnavailable, "connection failed"),
    "not JSON": (lambda: Reply(body=b"<html>Bad Gateway</html>"), StateAPIResponseError, "JSON"),
    "wrong shape": (
        lambda: Reply(body=b'{"ContextIdentifier": "Cust1", "State": ["Running"]}'),
        StateAPIResponseError,
        "wrong shape",
    ),
    "oversized": (
        lambda: Reply(body=b"[" + b"1," * 100_000 + b"1]"),
        StateAPIResponseError,
        "larger than",
    ),
    "404": (lambda: Reply(status=404), StateAPINotFound, "tenant_gate_state_api_url"),
    "429 Retry-After seconds": (
        lambda: Reply(status=429, headers={"Retry-After": "20"}),
        StateAPIUnavailable,
        "HTTP 429",
    ),
    "429 Retry-After date": (
        lambda: Reply(status=429, headers={"Retry-After": _in(120)}),
        StateAPIUnavailable,
        "HTTP 429",
    ),
    "tenant mismatch": (lambda: Reply(body=_ANOTHER_TENANT), TenantMismatch, "Cust2"),
}


@pytest.mark.parametrize("kind", FAILURES)
def test_every_failure_kind_counts_and_opens_the_circuit_at_the_threshold(
    superoffice: FakeSuperOffice, sleeps: RecordedSleep, kind: str
) -> None:
    make_reply, error, words = FAILURES[kind]
    replies = [make_reply() for _ in range(3)]
    superoffice.set_state("Cust1")
    url = _nothing_listens()
    if replies[0] is not None:
        url = superoffice.state_api_url
        superoffice.script("Cust1", *[reply for reply in replies if reply is not None])
    clock = Clock()
    breaker = CircuitBreaker(3, reset_timeout=1000.0, clock=clock)
    client = StateClient(url, retries=0, read_timeout=0.2, breaker=breaker, sleep=sleeps)
    for _ in range(3):
        assert not breaker.is_open
        with pytest.raises(error, match=words):
            client.get("Cust1")
        clock.now += MAX_RETRY_AFTER + 1  # past any Retry-After: only the count opens it
    with pytest.raises(CircuitOpen, match="circuit open") as caught:
        client.get("Cust1")  # the fake would answer the state now: never asked
    assert caught.value.retry_after == 1000.0 - (MAX_RETRY_AFTER + 1)
    if replies[0] is not None:
        assert superoffice.calls("Cust1") == 3
    assert sleeps.delays == []


def test_a_trial_that_succeeds_closes_the_circuit_one_that_fails_reopens_it(
    superoffice: FakeSuperOffice, sleeps: RecordedSleep
) -> None:
    superoffice.set_state("Cust1")
    superoffice.script("Cust1", Reply(body=b"garbage"), Reply(status=404), Reply(status=502))
    clock = Clock()
    breaker = CircuitBreaker(2, reset_timeout=60.0, clock=clock)
    client = StateClient(superoffice.state_api_url, retries=0, breaker=breaker, sleep=sleeps)
    for _ in range(2):
        with pytest.raises(StateAPIError):
            client.get("Cust1")
    with pytest.raises(CircuitOpen):
        client.get("Cust1")
    clock.now += 60
    with pytest.raises(StateAPIUnavailable, match="HTTP 502"):
        client.get("Cust1")  # the trial fails: open again for a full timeout
    clock.now += 59
    with pytest.raises(CircuitOpen):
        client.get("Cust1")
    clock.now += 1
    assert client.get("Cust1").running  # the trial succeeds: closed, the count reset
    superoffice.script("Cust1", Reply(status=500))
    with pytest.raises(StateAPIUnavailable, match="HTTP 500"):
        client.get("Cust1")  # one failure of two
    assert client.get("Cust1").running
    assert superoffice.calls("Cust1") == 6


class GatedSession(requests.Session):
    """Holds the first request for *tenant* until :attr:`go` is set."""

    def __init__(self, tenant: str) -> None:
        super().__init__()
        self.tenant = tenant
        self.entered = threading.Event()
        self.go = threading.Event()

    def get(self, url: str | bytes, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        if str(url).endswith(f"/{self.tenant}") and not self.entered.is_set():
            self.entered.set()
            assert self.go.wait(10), "the gated request was never let go"
        return super().get(url, **kwargs)


def test_half_open_lets_exactly_one_trial_through(
    superoffice: FakeSuperOffice, sleeps: RecordedSleep
) -> None:
    superoffice.set_state("Cust1")
    superoffice.set_state("Cust2")
    superoffice.script("Cust1", Reply(status=500))
    clock = Clock()
    breaker = CircuitBreaker(1, reset_timeout=60.0, clock=clock)
    session = GatedSession("Cust1")
    client = StateClient(
        superoffice.state_api_url, retries=0, breaker=breaker, session=session, sleep=sleeps
    )
    session.entered.set()  # the first call is not held back
    with pytest.raises(StateAPIUnavailable):
        client.get("Cust1")
    clock.now += 60
    session.entered.clear()
    answers: list[Any] = []
    trial = threading.Thread(target=lambda: answers.append(client.get("Cust1")))
    trial.start()
    try:
        assert session.entered.wait(10)  # the trial is under way
        for tenant in ("Cust2", "Cust1"):
            with pytest.raises(CircuitOpen):
                client.get(tenant)
    finally:
        session.go.set()
        trial.join(10)
    assert len(answers) == 1 and answers[0].running
    assert client.get("Cust2").running  # closed by the trial
    assert superoffice.calls("Cust1") == 2 and superoffice.calls("Cust2") == 1


# -- Retry-After ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "form", "seconds"),
    [(429, "seconds", 30.0), (503, "seconds", 30.0), (429, "date", 120.0)],
)
def test_retry_after_holds_every_call_of_the_process_until_the_moment(
    superoffice: FakeSuperOffice, sleeps: RecordedSleep, status: int, form: str, seconds: float
) -> None:
    superoffice.set_state("Cust1")
    superoffice.set_state("Cust2")
    header = f"{seconds:.0f}" if form == "seconds" else _in(seconds)
    superoffice.script("Cust1", Reply(status=status, headers={"Retry-After": header}))
    clock = Clock()
    breaker = CircuitBreaker(5, reset_timeout=60.0, clock=clock)
    client = StateClient(superoffice.state_api_url, retries=0, breaker=breaker, sleep=sleeps)
    with pytest.raises(StateAPIUnavailable, match=f"HTTP {status}") as caught:
        client.get("Cust1")
    held = caught.value.retry_after
    assert held is not None and seconds - 2 < held <= seconds
    clock.now += held - 0.5
    for tenant in ("Cust2", "Cust1"):  # a Retry-After is about the API, not the tenant
        with pytest.raises(CircuitOpen, match="Retry-After") as refused:
            client.get(tenant)
        assert refused.value.retry_after == pytest.approx(0.5)
    assert superoffice.calls("Cust2") == 0 and superoffice.calls("Cust1") == 1
    assert not breaker.is_open  # one failure: the circuit itself is closed
    clock.now += 0.5
    assert client.get("Cust2").running and client.get("Cust1").running


@pytest.mark.parametrize("header", ["86400", "date a year ahead"])
def test_a_huge_retry_after_is_cut_to_the_maximum(
    superoffice: FakeSuperOffice, sleeps: RecordedSleep, header: str
) -> None:
    assert MAX_RETRY_AFTER == 300.0
    superoffice.set_state("Cust1")
    if header.startswith("date"):
        header = _in(365 * 86400)
    superoffice.script("Cust1", Reply(status=429, headers={"Retry-After": header}))
    clock = Clock()
    breaker = CircuitBreaker(5, reset_timeout=60.0, clock=clock)
    client = StateClient(superoffice.state_api_url, retries=2, breaker=breaker, sleep=sleeps)
    with pytest.raises(StateAPIUnavailable) as caught:
        client.get("Cust1")
    assert caught.value.retry_after == 300.0
    assert breaker.retry_in() == 300.0
    assert sleeps.delays == []  # longer than backoff_max: never slept through in a call
    clock.now += 300
    assert client.get("Cust1").running


def test_a_retry_waits_for_a_retry_after_another_call_was_told(
    superoffice: FakeSuperOffice, sleeps: RecordedSleep
) -> None:
    superoffice.set_state("Cust1")
    superoffice.set_state("Cust2")
    superoffice.script("Cust1", Reply(status=500))
    superoffice.script("Cust2", Reply(status=429, headers={"Retry-After": "4"}))
    breaker = CircuitBreaker(5, reset_timeout=60.0, clock=Clock())
    session = GatedSession("Cust1")
    client = StateClient(
        superoffice.state_api_url,
        retries=1,
        backoff=0.5,
        breaker=breaker,
        session=session,
        sleep=sleeps,
    )
    answers: list[Any] = []
    first = threading.Thread(target=lambda: answers.append(client.get("Cust1")))
    first.start()
    try:
        assert session.entered.wait(10)  # Cust1's call is under way...
        assert client.get("Cust2").running  # ...when Cust2's is told to wait 4s
    finally:
        session.go.set()
        first.join(10)
    assert len(answers) == 1 and answers[0].running
    assert sleeps.delays == [4.0, 4.0]  # Cust1's retry waited 4s too, not its 0.5s
