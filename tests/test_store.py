"""The shared store, against a real Redis."""

from collections.abc import Iterator
from datetime import datetime, timezone

import pytest
import redis

from celery_tenant_gate.io.store.state_store import StateStore
from celery_tenant_gate.model.record import Source
from celery_tenant_gate.model.states import State, TenantState

RUNNING = TenantState(
    "Cust1",
    State.RUNNING,
    "Running",
    True,
    datetime(2030, 1, 1, tzinfo=timezone.utc),
    "https://online3/Cust1",
    "https://online3/Cust1/api",
)
SUSPENDED = TenantState("Cust1", State.SUSPENDED, "Suspended", False)


@pytest.fixture
def store(redis_client: redis.Redis, key_prefix: str) -> StateStore:
    return StateStore(redis_client, key_prefix)


def _write(store: StateStore, state: TenantState, source: Source, observed_at: float) -> bool:
    _, applied = store.write_state(
        state,
        source=source,
        observed_at=observed_at,
        learnt_at=observed_at,
        fresh_until=observed_at + 60,
        check_after=observed_at + 60,
    )
    return applied


def test_a_record_round_trips(store: StateStore) -> None:
    assert store.get("Cust1") is None
    assert _write(store, RUNNING, Source.PULL, 100.0)
    record = store.get("Cust1")
    assert record is not None
    assert record.state == RUNNING
    assert record.source is Source.PULL
    assert (record.learnt_at, record.fresh_until, record.check_after) == (100.0, 160.0, 160.0)
    assert record.version == 1
    assert not record.paused


def test_an_older_pull_cannot_overwrite_a_newer_push(store: StateStore) -> None:
    assert _write(store, SUSPENDED, Source.PUSH, 200.0)
    # A pull that was sent before the notification arrived answers late.
    assert not _write(store, RUNNING, Source.PULL, 199.5)
    record = store.get("Cust1")
    assert record is not None and record.state is not None
    assert record.state.state is State.SUSPENDED and record.source is Source.PUSH
    assert _write(store, RUNNING, Source.PULL, 201.0)


def test_a_failure_keeps_the_last_known_state(store: StateStore) -> None:
    _write(store, RUNNING, Source.PULL, 100.0)
    record, applied = store.write_failure(
        "Cust1", "HTTP 503", attempted_at=170.0, check_after=180.0
    )
    assert applied
    assert record.state == RUNNING
    assert (record.error, record.error_at, record.check_after) == ("HTTP 503", 170.0, 180.0)
    # A success clears the error.
    _write(store, RUNNING, Source.PULL, 181.0)
    record2 = store.get("Cust1")
    assert record2 is not None and record2.error == ""


def test_a_failure_started_before_a_newer_write_is_ignored(store: StateStore) -> None:
    _write(store, SUSPENDED, Source.PUSH, 200.0)
    record, applied = store.write_failure("Cust1", "timeout", attempted_at=150.0, check_after=160.0)
    assert not applied
    assert record.error == "" and record.check_after == 260.0


def test_pause_and_unpause_for_everyone(store: StateStore) -> None:
    assert store.set_paused("Cust1", True, reason="upgrade", at=300.0)
    assert not store.set_paused("Cust1", True, reason="upgrade again", at=301.0)
    assert store.paused() == {"Cust1": 301.0}
    record = store.get("Cust1")
    assert record is not None
    assert record.paused and record.pause_reason == "upgrade again"
    assert store.set_paused("Cust1", False, reason="", at=400.0)
    assert store.paused() == {}


def test_pause_does_not_touch_the_state(store: StateStore) -> None:
    _write(store, RUNNING, Source.PULL, 100.0)
    store.set_paused("Cust1", True, reason="manual", at=120.0)
    record = store.get("Cust1")
    assert record is not None and record.state == RUNNING and record.paused


def test_the_lock_is_exclusive_and_released_by_its_owner_only(store: StateStore) -> None:
    token = store.try_lock("Cust1", 10)
    assert token is not None
    assert store.try_lock("Cust1", 10) is None
    assert store.get_with_lock("Cust1")[1]
    store.unlock("Cust1", "someone-else")
    assert store.try_lock("Cust1", 10) is None
    store.unlock("Cust1", token)
    assert not store.get_with_lock("Cust1")[1]
    assert store.try_lock("Cust1", 10) is not None


@pytest.fixture
def subscription(redis_client: redis.Redis, store: StateStore) -> Iterator[redis.client.PubSub]:
    pubsub = redis_client.pubsub()
    pubsub.subscribe(store.channel)
    confirmation = pubsub.get_message(timeout=2.0)
    assert confirmation is not None and confirmation["type"] == "subscribe"
    yield pubsub
    pubsub.close()


def _next_message(pubsub: redis.client.PubSub) -> bytes | None:
    message = pubsub.get_message(timeout=2.0)
    return None if message is None else message["data"]


def test_every_write_is_announced_on_the_change_channel(
    store: StateStore, subscription: redis.client.PubSub
) -> None:
    _write(store, RUNNING, Source.PULL, 100.0)
    assert _next_message(subscription) == b"Cust1"
    store.set_paused("Cust1", True, reason="x", at=1.0)
    assert _next_message(subscription) == b"Cust1"
    store.update_endpoint("Cust1", endpoint="https://online5/Cust1", api="", observed_at=101.0)
    assert _next_message(subscription) == b"Cust1"
    # A refused write announces nothing.
    _write(store, SUSPENDED, Source.PULL, 50.0)
    assert _next_message(subscription) is None


def test_garbage_in_a_record_never_crashes_a_reader(
    store: StateStore, redis_client: redis.Redis
) -> None:
    redis_client.hset(
        store.key("Cust1"),
        mapping={"state": "banana", "fresh_until": "soon", "valid_until": "x", "source": "?"},
    )
    record = store.get("Cust1")
    assert record is not None and record.state is not None
    assert record.state.state is State.UNRECOGNISED
    assert record.fresh_until == 0.0


def test_a_pause_by_hand_is_not_turned_into_one_that_ends_by_itself(store: StateStore) -> None:
    store.set_paused("Cust1", True, reason="migration", at=1.0, by="manual")
    assert not store.set_paused("Cust1", True, reason="Upgrade notification", at=2.0, by="webhook")
    record = store.get("Cust1")
    assert record is not None
    assert (record.paused_by, record.pause_reason) == ("manual", "migration")
    assert not record.resumes_by_itself
    assert store.set_paused("Cust1", False, reason="", at=3.0, by="manual")
