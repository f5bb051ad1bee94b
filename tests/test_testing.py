"""The helpers we ship for tests and the demo."""

import redis

from celery_tenant_gate.model.states import parse_timestamp
from celery_tenant_gate.testing import EmbeddedRedis, FakeSuperOffice, Reply
from celery_tenant_gate.testing.superoffice import dotnet_timestamp


def test_embedded_redis_serves_and_goes_away() -> None:
    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url)
        assert client.ping()
        client.close()
        port = server.port
    try:
        redis.Redis(port=port, socket_connect_timeout=0.5, retry=None).ping()
    except redis.ConnectionError:
        pass
    else:
        raise AssertionError("the embedded redis-server is still running")


def test_fake_superoffice_counts_calls_and_plays_scripts(superoffice: FakeSuperOffice) -> None:
    import requests

    superoffice.set_state("Cust1", "Suspended")
    superoffice.script("Cust1", Reply(status=503))
    url = f"{superoffice.state_api_url}/Cust1"
    assert requests.get(url, timeout=5).status_code == 503
    answer = requests.get(url, timeout=5).json()
    assert answer["State"] == "Suspended" and answer["IsRunning"] is False
    # A tenant it does not know: 200, State Unknown (0), not running, as SuperOffice.
    unknown = requests.get(f"{superoffice.state_api_url}/Cust2", timeout=5)
    assert unknown.status_code == 200
    body = unknown.json()
    assert (body["ContextIdentifier"], body["State"], body["IsRunning"]) == (
        "Cust2",
        "Unknown",
        False,
    )
    superoffice.not_found("Cust2")  # a 404 only when told
    assert requests.get(f"{superoffice.state_api_url}/Cust2", timeout=5).status_code == 404
    superoffice.set_state("Cust2", "Running")
    assert requests.get(f"{superoffice.state_api_url}/Cust2", timeout=5).json()["IsRunning"]
    superoffice.forget("Cust1")  # unknown again
    assert requests.get(url, timeout=5).json()["State"] == "Unknown"
    assert superoffice.calls("Cust1") == 3 and superoffice.calls() == 6


def test_dotnet_timestamps_have_seven_digits_and_read_back() -> None:
    from datetime import datetime, timezone

    when = datetime(2026, 11, 27, 21, 30, 1, 123456, timezone.utc)
    text = dotnet_timestamp(when)
    assert text == "2026-11-27T21:30:01.1234560Z"
    assert parse_timestamp(text) == when
