"""The control task written directly to a Redis broker is the message kombu writes, and
the direct path is taken only where that holds."""

from __future__ import annotations

import json
import os
import signal
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from kombu import Queue

from celery_tenant_gate.io.broker.redis_control import RedisControlQueue, redis_control_queue
from celery_tenant_gate.web.factory import ControlSender

pytestmark = pytest.mark.redis

KWARGS = {"change_type": 0, "context_id": "Cust1", "token_iat": 1.5, "received_at": 2.5}


@pytest.fixture
def queue_name(key_prefix: str, redis_client: redis.Redis) -> Iterator[str]:
    name = f"{key_prefix}:control"
    yield name
    for key in redis_client.scan_iter(match=f"*{name}*"):
        redis_client.delete(key)


def make_app(broker: str, **conf: Any) -> Celery:
    app = Celery("control-redis-test", broker=broker, set_as_current=False)
    app.conf.update(conf)
    return app


def normalised(raw: bytes) -> str:
    """The stored message with its task id and delivery tag replaced by placeholders."""
    text = raw.decode()
    message = json.loads(text)
    task_id = message["headers"]["id"]
    tag = message["properties"]["delivery_tag"]
    return text.replace(task_id, "<task id>").replace(tag, "<delivery tag>")


@pytest.mark.parametrize(
    "conf",
    [
        {},
        {"task_serializer": "pickle"},
        {"task_compression": "zlib"},
        {"task_default_delivery_mode": "transient"},
        {"broker_transport_options": {"global_keyprefix": "gkp:"}},
        {"broker_transport_options": {"priority_steps": [1, 5, 9], "sep": ":"}},
    ],
    ids=["default", "pickle", "zlib", "transient", "global_keyprefix", "priority_steps"],
)
def test_the_message_is_the_one_kombu_writes(
    redis_url: str, redis_client: redis.Redis, queue_name: str, conf: dict[str, Any]
) -> None:
    app = make_app(redis_url, **conf)
    direct = redis_control_queue(app, queue_name, redis.Redis.from_url(redis_url))
    assert isinstance(direct, RedisControlQueue) and direct.same_as_store
    ControlSender(app, queue_name).send(KWARGS)
    direct.push(KWARGS)
    # Both went to the one list kombu's transport chose (prefix, priority steps).
    assert redis_client.llen(direct.key) == 2
    through_kombu, written_directly = redis_client.rpop(direct.key, 2)  # type: ignore[misc]
    assert normalised(written_directly) == normalised(through_kombu)


@pytest.mark.parametrize("built", ["from its frame", "in full", "after a fork"])
def test_each_message_is_the_one_kombu_writes_whatever_its_arguments(
    redis_url: str, redis_client: redis.Redis, queue_name: str, built: str
) -> None:
    app = make_app(redis_url)
    direct = redis_control_queue(app, queue_name, redis.Redis.from_url(redis_url))
    assert isinstance(direct, RedisControlQueue)
    direct.push(KWARGS)  # makes the frame
    assert direct._frame is not None and direct._frame.pieces is not None
    if built == "in full":
        direct._frame.pieces = None  # as if a placeholder showed up elsewhere
    elif built == "after a fork":
        direct._frame.pid = -1  # made by another process: made again
    redis_client.delete(direct.key)
    odd = {
        **KWARGS,
        "context_id": 'Cust"7\\\u00e9\n',
        "version_name": "x" * 2000,
        "token_iat": None,
    }
    for kwargs in (KWARGS, odd):
        ControlSender(app, queue_name).send(kwargs)
        direct.push(kwargs)
        through_kombu, written_directly = redis_client.rpop(direct.key, 2)  # type: ignore[misc]
        assert normalised(written_directly) == normalised(through_kombu)
    if built == "after a fork":
        assert direct._frame.pid == os.getpid()


def test_keep_records_and_queues_once(
    redis_url: str, redis_client: redis.Redis, queue_name: str, key_prefix: str
) -> None:
    direct = redis_control_queue(make_app(redis_url), queue_name, redis.Redis.from_url(redis_url))
    assert direct is not None
    record = f"{key_prefix}:seen:abc"
    assert direct.keep([(record, 30.2, KWARGS)]) == [True]
    assert direct.keep([(record, 30.2, KWARGS)]) == [False]
    assert redis_client.llen(direct.key) == 1
    assert 30 <= redis_client.ttl(record) <= 31
    # The record holds the id of the control task it queued.
    message = json.loads(redis_client.lindex(direct.key, 0))  # type: ignore[arg-type]
    assert redis_client.get(record) == message["headers"]["id"].encode()


def test_keep_answers_for_each_of_several_in_one_round_trip(
    redis_url: str, redis_client: redis.Redis, queue_name: str, key_prefix: str
) -> None:
    direct = redis_control_queue(make_app(redis_url), queue_name, redis.Redis.from_url(redis_url))
    assert direct is not None
    seen, broken = f"{key_prefix}:seen:old", f"{key_prefix}:seen:broken"
    direct.keep([(seen, 30, KWARGS)])
    redis_client.rpush(broken, "a list, not a record")  # reading it fails: WRONGTYPE
    fresh = [(f"{key_prefix}:seen:{n}", 30, {**KWARGS, "n": n}) for n in range(3)]
    outcome = direct.keep([fresh[0], (seen, 30, KWARGS), fresh[1], (broken, 30, KWARGS), fresh[2]])
    assert outcome[:3] == [True, False, True] and outcome[4] is True
    assert isinstance(outcome[3], redis.ResponseError)
    queued = [json.loads(raw) for raw in redis_client.lrange(direct.key, 0, -1)]
    assert len(queued) == 4  # the first one, then three fresh ones, in order
    assert [m["headers"]["kwargsrepr"] for m in queued[:3]] == [
        repr({**KWARGS, "n": n}) for n in (2, 1, 0)
    ]


def test_a_retried_round_trip_counts_as_kept(
    redis_url: str, redis_client: redis.Redis, queue_name: str, key_prefix: str
) -> None:
    # redis-py sends a pipeline again when the connection drops before its answer: the
    # script then finds its own record (this attempt's task id) and is not a duplicate.
    direct = redis_control_queue(make_app(redis_url), queue_name, redis.Redis.from_url(redis_url))
    assert direct is not None
    record = f"{key_prefix}:seen:abc"
    task_id, message = direct.message(KWARGS)
    call = (record, direct.key, task_id, 30, message)
    assert direct._run([call]) == [1]
    assert direct._run([call]) == [1]
    assert direct._run([(record, direct.key, str(uuid.uuid4()), 30, message)]) == [0]
    assert redis_client.llen(direct.key) == 1


def test_a_connection_dropped_by_redis_between_notifications_costs_none(
    redis_url: str, redis_client: redis.Redis, queue_name: str, key_prefix: str
) -> None:
    direct = redis_control_queue(make_app(redis_url), queue_name, redis.Redis.from_url(redis_url))
    assert direct is not None
    name = f"tenant-gate-test-{uuid.uuid4().hex[:8]}"
    assert direct.keep([(f"{key_prefix}:seen:0", 30, KWARGS)]) == [True]
    direct._connection.send_command("CLIENT", "SETNAME", name)
    assert direct._connection.read_response() in (b"OK", "OK")
    # Named again after each reconnection, so that the test can find it.
    direct._connection.client_name = name
    for n in range(1, 4):
        # Redis closes the connection (an idle timeout, a restart, a failover proxy).
        [ours] = [c for c in redis_client.client_list() if c.get("name") == name]
        assert redis_client.client_kill_filter(_id=ours["id"]) == 1
        fresh = [(f"{key_prefix}:seen:{n}:{m}", 30, KWARGS) for m in range(n)]
        assert direct.keep(fresh) == [True] * n  # tried again through redis-py's path
        # And the next goes over its own connection again, made anew.
        assert direct.keep([(f"{key_prefix}:seen:{n}:next", 30, KWARGS)]) == [True]
    assert redis_client.llen(direct.key) == 1 + (1 + 1) + (2 + 1) + (3 + 1)


def test_a_forked_process_uses_a_connection_of_its_own(
    redis_url: str, redis_client: redis.Redis, queue_name: str, key_prefix: str
) -> None:
    direct = redis_control_queue(make_app(redis_url), queue_name, redis.Redis.from_url(redis_url))
    assert direct is not None
    assert direct.keep([(f"{key_prefix}:seen:parent", 30, KWARGS)]) == [True]
    parents = direct._connection
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: keep one, say whether it was kept on another connection
        try:
            kept = direct.keep([(f"{key_prefix}:seen:child", 30, KWARGS)])
            os.write(write, b"1" if kept == [True] and direct._connection is not parents else b"0")
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as answer:
        assert answer.read() == b"1"
    os.waitpid(pid, 0)
    # The parent's connection still answers for the parent: nothing mixed up.
    assert direct.keep([(f"{key_prefix}:seen:parent-again", 30, KWARGS)]) == [True]
    assert direct._connection is parents
    assert redis_client.llen(direct.key) == 3


def test_a_child_forked_while_another_thread_made_a_round_trip_does_not_hang(
    redis_url: str, redis_client: redis.Redis, queue_name: str, key_prefix: str
) -> None:
    direct = redis_control_queue(make_app(redis_url), queue_name, redis.Redis.from_url(redis_url))
    assert direct is not None
    assert direct.keep([(f"{key_prefix}:seen:parent", 30, KWARGS)]) == [True]
    direct._lock.acquire()  # as if another thread were in a round trip at the fork
    try:
        pid = os.fork()
        if pid == 0:  # the child: its lock would stay taken for ever
            signal.alarm(10)  # a hang ends the child, and the test, within a bound
            kept = direct.keep([(f"{key_prefix}:seen:child", 30, KWARGS)])
            os._exit(0 if kept == [True] else 1)
    finally:
        direct._lock.release()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert redis_client.llen(direct.key) == 2


def test_a_redis_that_lost_its_scripts_is_given_it_again(queue_name: str) -> None:
    from celery_tenant_gate.testing import EmbeddedRedis

    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url)
        direct = redis_control_queue(make_app(server.url), queue_name, client)
        assert direct is not None
        assert direct.keep([("seen:1", 30, KWARGS)]) == [True]
        client.script_flush()  # as after a restart
        assert direct.keep([("seen:2", 30, KWARGS), ("seen:1", 30, KWARGS)]) == [True, False]
        assert client.llen(direct.key) == 2
        client.close()


def test_when_the_push_fails_nothing_is_recorded(
    redis_url: str, redis_client: redis.Redis, queue_name: str, key_prefix: str
) -> None:
    direct = redis_control_queue(make_app(redis_url), queue_name, redis.Redis.from_url(redis_url))
    assert direct is not None
    redis_client.set(direct.key, "not a list")
    record = f"{key_prefix}:seen:abc"
    [outcome] = direct.keep([(record, 30, KWARGS)])
    assert isinstance(outcome, redis.ResponseError) and "WRONGTYPE" in str(outcome)
    assert redis_client.exists(record) == 0


def test_another_redis_as_broker_is_pushed_to_on_its_own(redis_url: str, queue_name: str) -> None:
    from celery_tenant_gate.testing import EmbeddedRedis

    with EmbeddedRedis() as broker:
        app = make_app(broker.url)
        direct = redis_control_queue(app, queue_name, redis.Redis.from_url(redis_url))
        assert direct is not None and not direct.same_as_store
        with pytest.raises(RuntimeError, match="shared store"):
            direct.keep([("any", 1, KWARGS)])
        direct.push(KWARGS)
        assert redis.Redis.from_url(broker.url).llen(queue_name) == 1
        direct.client.close()


def test_a_database_of_its_own_is_another_redis(redis_url: str, queue_name: str) -> None:
    base = redis_url.rsplit("/", 1)[0]
    store = redis.Redis.from_url(f"{base}/0")
    same = redis_control_queue(make_app(f"{base}/0"), queue_name, store)
    other = redis_control_queue(make_app(f"{base}/1"), queue_name, store)
    assert same is not None and same.same_as_store
    assert other is not None and not other.same_as_store
    redis.Redis.from_url(f"{base}/1").delete(
        f"_kombu.binding.{queue_name}", f"_kombu.binding_permanent.{queue_name}"
    )


@pytest.mark.parametrize(
    "conf",
    [
        {"task_protocol": 1},
        {"task_routes": {"tenant_gate.control": {"priority": 5}}},
        {"task_routes": {"tenant_gate.control": {"exchange": "elsewhere"}}},
        {"task_queues": "expiring"},
        {"task_queues": "topic"},
    ],
    ids=["protocol 1", "routed priority", "routed exchange", "expiring queue", "topic exchange"],
)
def test_kombu_sends_it_where_the_message_would_differ(
    redis_url: str, queue_name: str, conf: dict[str, Any]
) -> None:
    from kombu import Exchange

    queues = {
        "expiring": [Queue(queue_name, expires=60)],
        "topic": [Queue(queue_name, Exchange(queue_name, "topic"), routing_key="control.#")],
    }
    if conf.get("task_queues") in queues:
        conf = {"task_queues": queues[conf["task_queues"]]}
    app = make_app(redis_url, **conf)
    assert redis_control_queue(app, queue_name, redis.Redis.from_url(redis_url)) is None


def test_rabbitmq_keeps_kombus_path(amqp_url: str, redis_url: str, queue_name: str) -> None:
    app = make_app(amqp_url)
    assert redis_control_queue(app, queue_name, redis.Redis.from_url(redis_url)) is None


def test_failover_urls_keep_kombus_path(redis_url: str, queue_name: str) -> None:
    app = make_app(f"{redis_url};redis://127.0.0.1:1/0")  # kombu fails over to the next
    assert redis_control_queue(app, queue_name, redis.Redis.from_url(redis_url)) is None
