"""The State API client against a real local HTTP server playing SuperOffice."""

import socket
import time

import pytest

from celery_tenant_gate.io.superoffice.circuit import CircuitBreaker
from celery_tenant_gate.io.superoffice.state_api import StateClient
from celery_tenant_gate.model.errors import (
    CircuitOpen,
    InvalidTenantId,
    StateAPIResponseError,
    StateAPIStatusError,
    StateAPIUnavailable,
    TenantMismatch,
    TenantNotFound,
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


def test_unknown_tenant_is_tenant_not_found(client: StateClient) -> None:
    with pytest.raises(TenantNotFound, match="Cust404"):
        client.get("Cust404")


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


def test_not_found_does_not_open_the_circuit(superoffice: FakeSuperOffice) -> None:
    client = StateClient(
        superoffice.state_api_url, retries=0, breaker=CircuitBreaker(1, reset_timeout=60)
    )
    for _ in range(3):
        with pytest.raises(TenantNotFound):
            client.get("Cust9")
    assert superoffice.calls("Cust9") == 3
