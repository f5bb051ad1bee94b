"""What ``celery_tenant_gate._compat`` relies on in Celery, kombu, py-amqp and redis-py
is still there and still behaves so. A failure names the upstream attribute, the
versions ``_compat`` was checked on and those installed: after an upgrade, adapt
``_compat.py`` (and only it)."""

from __future__ import annotations

import ast
import inspect
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis

from celery_tenant_gate import _compat

CHECKED = "Celery 5.7.0, kombu 5.7.0, py-amqp 5.4.2, redis-py 8.2.0"


def changed(what: str) -> str:
    """The message of a failure: what changed, on which versions it was checked."""
    installed = ", ".join(
        f"{name} {version(dist)}"
        for name, dist in (
            ("Celery", "celery"),
            ("kombu", "kombu"),
            ("py-amqp", "amqp"),
            ("redis-py", "redis"),
        )
    )
    return (
        f"{what} is not what celery_tenant_gate/_compat.py relies on: it was checked on "
        f"{CHECKED}; installed: {installed}"
    )


@contextmanager
def upstream(what: str) -> Iterator[None]:
    """Fail naming *what* if using it raises (gone, or changed its signature) or does
    not do what the assertions in the block expect."""
    try:
        yield
    except Exception as exc:
        pytest.fail(f"{changed(what)} ({type(exc).__name__}: {exc})")


#: Attributes of upstream objects that only _compat.py may use.
INTERNALS = frozenset(
    {
        "_q_for_pri",
        "global_keyprefix",
        "alt",
        "declared_entities",
        "send_method",
        "auto_decode",
        "connection_class",
        "connection_kwargs",
        "pack_commands",
        "send_packed_command",
        "read_response",
        "transport_cls",
        "as_task_v2",
        "signature_from_request",
        "on_task_request",
        "task_ready",
        "acknowledged",
    }
)


def test_only_compat_uses_upstream_internals() -> None:
    package = Path(_compat.__file__).parent
    found = [
        f"{path.relative_to(package.parent)}:{node.lineno}: .{node.attr}"
        for path in sorted(package.rglob("*.py"))
        if path.name != "_compat.py"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and node.attr in INTERNALS
    ]
    assert found == [], "use celery_tenant_gate._compat for these:\n" + "\n".join(found)


# -- py-amqp ---------------------------------------------------------------------------


def test_py_amqp_method_ids_and_argument_signatures() -> None:
    from amqp import spec
    from amqp.abstract_channel import AbstractChannel
    from amqp.channel import Channel

    assert spec.Basic.Publish == _compat.BASIC_PUBLISH, changed("amqp.spec.Basic.Publish")
    assert spec.Basic.Nack == _compat.BASIC_NACK, changed("amqp.spec.Basic.Nack")
    with upstream("amqp.channel.Channel._basic_publish(argsig=...)"):
        argsig = inspect.signature(Channel._basic_publish).parameters["argsig"].default
    assert argsig == _compat.BASIC_PUBLISH_ARGS, changed("Channel._basic_publish's argsig")
    with upstream("amqp.abstract_channel.AbstractChannel.send_method(sig, format, args, content)"):
        parameters = list(inspect.signature(AbstractChannel.send_method).parameters)
    assert parameters[:5] == ["self", "sig", "format", "args", "content"], changed(
        "amqp.abstract_channel.AbstractChannel.send_method's parameters"
    )


@pytest.mark.rabbitmq
def test_py_amqp_publish_confirms_returns_nack_and_bytes(amqp_url: str) -> None:
    from amqp.basic_message import Message
    from kombu.connection import Connection

    source = f"tgtest.compat.{uuid.uuid4().hex[:8]}"
    dead, exchange = f"{source}.dead", f"{source}.dlx"
    body = b"\xff\xfe not utf-8"
    acked: set[int] = set()
    nacked: set[int] = set()
    returned: list[tuple[Any, str, str, Any]] = []

    def settle(into: set[int]) -> Any:
        return lambda tag, multiple: into.update(range(1, tag + 1) if multiple else [tag])

    with Connection(amqp_url) as connection:
        channel: Any = connection.channel()
        try:
            with upstream("amqp.channel.Channel.auto_decode"):
                _compat.amqp_keep_bytes(channel)
            with upstream("amqp.channel.Channel.events"):
                _compat.amqp_on_confirms(
                    channel,
                    on_ack=settle(acked),
                    on_nack=settle(nacked),
                    on_return=lambda *args: returned.append(args),
                )
            channel.confirm_select()
            channel.exchange_declare(exchange, "fanout", auto_delete=False)
            channel.queue_declare(dead, auto_delete=False)
            channel.queue_bind(dead, exchange)
            channel.queue_declare(
                source, auto_delete=False, arguments={"x-dead-letter-exchange": exchange}
            )
            with upstream("amqp.abstract_channel.AbstractChannel.send_method"):
                for n in range(2):
                    message = Message(body, content_encoding="utf-8", application_headers={"n": n})
                    _compat.amqp_publish(channel, message, "", source, mandatory=True)
                _compat.amqp_publish(channel, Message(b"lost"), "", f"{source}.x", mandatory=True)
            while len(acked | nacked) < 3:
                connection.drain_events(timeout=10)
            assert acked == {1, 2, 3}, changed("py-amqp's basic_ack callbacks (Channel.events)")
            assert [(ex, key, msg.body) for _, ex, key, msg in returned] == [
                ("", f"{source}.x", b"lost")
            ], changed("py-amqp's basic_return callbacks (Channel.events)")

            first = channel.basic_get(source, no_ack=False)
            second = channel.basic_get(source, no_ack=False)
            assert first.body == body, changed("amqp.channel.Channel.auto_decode")
            assert first.properties["application_headers"] == {"n": 0}, changed(
                "amqp.basic_message.Message properties"
            )
            with upstream("basic.nack sent with send_method"):
                _compat.amqp_nack(channel, second.delivery_tag, multiple=True)
                # Answered after the nack: the source queue has dead-lettered both.
                assert channel.queue_declare(source, passive=True).message_count == 0
            assert channel.queue_declare(dead, passive=True).message_count == 2, changed(
                "basic.nack (60, 120) 'Lbb'"
            )
        finally:
            for queue in (source, dead):
                channel.queue_delete(queue)
            channel.exchange_delete(exchange)
            channel.close()


# -- kombu -----------------------------------------------------------------------------


def test_kombu_declares_again_once_declared_entities_are_forgotten() -> None:
    from kombu import Connection, Exchange, Queue
    from kombu.common import maybe_declare

    queue = Queue(f"compat.{uuid.uuid4().hex}", Exchange("compat", "direct"), routing_key="k")
    with Connection("memory://") as connection:
        channel = connection.default_channel
        assert maybe_declare(queue, channel) is True
        assert maybe_declare(queue, channel) is False  # remembered
        with upstream("kombu.Connection.declared_entities"):
            _compat.forget_declared(connection)
        assert maybe_declare(queue, channel) is True, changed(
            "kombu.Connection.declared_entities (maybe_declare's cache)"
        )


def test_kombu_tells_failover_urls() -> None:
    from kombu import Connection

    with upstream("kombu.Connection.alt"):
        assert _compat.has_failover(Connection("redis://a:1//;redis://b:2//"))
        assert not _compat.has_failover(Connection("redis://a:1//"))


def test_kombu_redis_transport_constants() -> None:
    from kombu.transport import redis as kombu_redis

    channel = kombu_redis.Channel
    assert channel.sep == _compat.KOMBU_REDIS_SEP, changed("kombu.transport.redis.Channel.sep")
    assert tuple(kombu_redis.PRIORITY_STEPS) == _compat.KOMBU_REDIS_PRIORITY_STEPS, changed(
        "kombu.transport.redis.PRIORITY_STEPS"
    )
    assert channel.priority_steps == kombu_redis.PRIORITY_STEPS, changed(
        "kombu.transport.redis.Channel.priority_steps"
    )
    assert channel.keyprefix_queue == _compat.KOMBU_REDIS_BINDINGS, changed(
        "kombu.transport.redis.Channel.keyprefix_queue"
    )


@pytest.mark.redis
def test_kombu_redis_storage(redis_url: str, redis_client: redis.Redis, key_prefix: str) -> None:
    from kombu import Connection, Exchange, Producer, Queue
    from kombu.utils.json import dumps

    name = f"{key_prefix}:queue"
    sep = _compat.KOMBU_REDIS_SEP
    options = {"global_keyprefix": "gkp:"}
    with Connection(redis_url, transport_options=options) as connection:
        channel: Any = connection.default_channel
        with upstream("kombu.transport.redis.Channel._q_for_pri / global_keyprefix"):
            key = _compat.kombu_redis_list(channel, name)
            step_list = channel._q_for_pri(name, 5)
        assert key == f"gkp:{name}", changed("Channel.global_keyprefix + Channel._q_for_pri")
        assert step_list == f"{name}{sep}3", changed("kombu.transport.redis.Channel._q_for_pri")
        with upstream("kombu.transport.redis.Channel.pool"):
            pool = _compat.kombu_redis_pool(channel)
        assert isinstance(pool, redis.ConnectionPool), changed("Channel.pool")
        Queue(name, routing_key=name)(channel).declare()
        producer = Producer(channel)
        try:
            for n in (1, 2):
                producer.publish(
                    b"body", routing_key=name, headers={"n": n}, content_type="application/data"
                )
            stored: list[bytes] = redis_client.lrange(key, 0, -1)
        finally:
            redis_client.delete(key)
    # LPUSH: the newest at the left end; consumers pop the right end (the oldest).
    assert [json.loads(raw)["headers"] for raw in stored] == [{"n": 2}, {"n": 1}], changed(
        "kombu.transport.redis.Channel._put (LPUSH)"
    )
    document = json.loads(stored[-1])
    built = _compat.kombu_redis_envelope(
        document["body"],
        content_type="application/data",
        content_encoding="binary",
        headers={"n": 1},
        properties={"delivery_mode": 2},
        queue=name,
        delivery_tag=document["properties"]["delivery_tag"],
    )
    assert dumps(built) == stored[-1].decode(), changed(
        "the message kombu's Redis transport stores (virtual Channel.basic_publish)"
    )
    held = _compat.kombu_redis_message(stored[-1])
    assert (held.body, held.headers, held.content_type) == (
        b"body",
        {"n": 1},
        "application/data",
    ), changed("the message kombu's Redis transport stores")

    exchange = f"{key_prefix}.exchange"
    bindings = _compat.KOMBU_REDIS_BINDINGS % exchange
    with Connection(redis_url) as connection:
        queue = Queue(name, Exchange(exchange, "direct"), routing_key="rk")
        queue(connection.default_channel).declare()
    try:
        members: set[bytes] = redis_client.smembers(bindings)
    finally:
        redis_client.delete(bindings, name)
    assert members == {f"rk{sep}{sep}{name}".encode()}, changed(
        "kombu.transport.redis bindings (Channel.keyprefix_queue, routing key|pattern|queue)"
    )


# -- redis-py --------------------------------------------------------------------------


@pytest.mark.redis
def test_redis_pool_settings_and_a_round_trip(redis_url: str, key_prefix: str) -> None:
    pool = redis.ConnectionPool.from_url(redis_url, max_connections=7)
    with upstream("redis.ConnectionPool.connection_class / connection_kwargs / max_connections"):
        settings = _compat.redis_pool_settings(pool)
    assert settings.connection_type is redis.Connection, changed("ConnectionPool.connection_class")
    assert settings.max_connections == 7, changed("redis.ConnectionPool.max_connections")
    assert {"host", "port", "db"} <= set(settings.kwargs), changed(
        "redis.ConnectionPool.connection_kwargs"
    )
    connection = settings.connection_type(**settings.kwargs)
    try:
        with upstream("redis.Connection.pack_commands / send_packed_command / read_response"):
            answers = _compat.redis_round_trip(
                connection,
                [
                    ("SET", f"{key_prefix}:k", "x"),
                    ("INCR", f"{key_prefix}:k"),
                    ("GET", f"{key_prefix}:k"),
                ],
            )
        assert answers[0] in (True, b"OK") and answers[2] == b"x", changed(
            "redis.Connection.read_response"
        )
        assert isinstance(answers[1], redis.ResponseError), changed(
            "redis.Connection.read_response (an error answer raises ResponseError)"
        )
    finally:
        connection.disconnect()
        pool.disconnect()


# -- Celery ----------------------------------------------------------------------------


def test_celery_task_message_shape() -> None:
    from celery import Celery
    from celery.app import amqp

    assert amqp.task_message._fields == ("headers", "properties", "body", "sent_event"), changed(
        "celery.app.amqp.task_message"
    )
    app = Celery("compat", set_as_current=False)
    with upstream("app.amqp.create_task_message"):
        headers, properties, body = _compat.task_message(app, "id-1", "a.task", kwargsrepr="{}")
    assert (headers["id"], headers["task"], headers["kwargsrepr"]) == ("id-1", "a.task", "{}"), (
        changed("task_message.headers")
    )
    assert properties["correlation_id"] == "id-1", changed("task_message.properties")
    assert body[:2] == ((), {}) and isinstance(body[2], dict), changed("task_message.body")


def test_celery_signature_from_request() -> None:
    from celery import Celery
    from celery.app.task import Context

    app = Celery("compat", set_as_current=False)

    @app.task(name="compat.add", shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    request = Context(
        id="id-2",
        args=[1, 2],
        kwargs={},
        retries=3,
        delivery_info={"exchange": "", "routing_key": "work", "priority": 4},
    )
    with upstream("celery.app.task.Task.signature_from_request"):
        signature = _compat.signature_from_request(add, request, queue="held", headers={"h": 1})
    options = signature.options
    assert (options["task_id"], options["retries"]) == ("id-2", 3), changed(
        "Task.signature_from_request (keeps the request's id and retries)"
    )
    assert (options["queue"], options["priority"], options["headers"]) == ("held", 4, {"h": 1}), (
        changed("Task.signature_from_request (queue, priority, extra options)")
    )
    assert list(signature.args) == [1, 2], changed("Task.signature_from_request (args)")


@pytest.fixture
def consumer() -> Iterator[Any]:
    """A worker's consumer (no worker around it), on the memory transport."""
    from celery import Celery
    from celery.worker import state
    from celery.worker.consumer import Consumer
    from kombu.asynchronous.timer import Timer

    app = Celery("compat", broker="memory://", set_as_current=False)

    @app.task(name="compat.add", shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    with upstream("celery.worker.consumer.Consumer(on_task_request, ...)"):
        built = Consumer(
            lambda request: None,
            app=app,
            hostname="compat@test",
            timer=Timer(),
            pool=SimpleNamespace(apply_async=None, is_green=False),
            controller=SimpleNamespace(state=state, use_eventloop=False),
        )
    built.event_dispatcher = None  # the Events step sets it when the consumer starts
    yield built
    app.close()


def _received(consumer: Any, handled: list[Any], connection: Any) -> tuple[Any, Any]:
    """A task message received by *consumer* on *connection*: the request its handler
    was given, and the queue it came from."""
    from kombu import Queue

    name = f"compat.{uuid.uuid4().hex}"
    queue = Queue(name, routing_key=name)(connection.default_channel)
    queue.declare()
    consumer.app.tasks["compat.add"].apply_async((1, 2), queue=name, connection=connection)
    message = queue.get(no_ack=False, accept=["json"])
    with upstream("the consumer's strategies (celery.worker.strategy.default)"):
        consumer.update_strategies()
        consumer.strategies["compat.add"](
            message, None, message.ack_log_error, message.reject_log_error, []
        )
    assert len(handled) == 1, changed("Consumer.on_task_request (the strategies call it)")
    assert _compat.request_message(handled[0]) is message, changed(
        "celery.worker.request.Request.message"
    )
    return handled[0], queue


def test_celery_consumer_hands_requests_to_its_task_handler(consumer: Any) -> None:
    handled: list[Any] = []
    with upstream("celery.worker.consumer.Consumer.on_task_request"):
        original = _compat.task_handler(consumer)
        _compat.set_task_handler(consumer, handled.append)
    assert callable(original), changed("Consumer.on_task_request")
    with consumer.app.connection_for_write() as connection:
        request, _ = _received(consumer, handled, connection)
    assert _compat.request_acknowledged(request) is False, changed("Request.acknowledged")
    _compat.mark_acknowledged(request)
    assert _compat.request_acknowledged(request) is True

    # The task's request is made from the request's dict: a changed route reaches it.
    info = _compat.live_delivery_info(request)
    info["routing_key"] = "elsewhere"
    assert request.request_dict["delivery_info"]["routing_key"] == "elsewhere", changed(
        "celery.worker.request.Request.delivery_info (the dict of request_dict)"
    )


def test_celery_request_revoked_requeue_and_task_ready(consumer: Any) -> None:
    from celery.worker import state

    handled: list[Any] = []
    _compat.set_task_handler(consumer, handled.append)
    with consumer.app.connection_for_write() as connection:
        request, _ = _received(consumer, handled, connection)
    with upstream("celery.worker.state.task_ready"):
        state.task_reserved(request)
        _compat.worker_task_ready()(request)
    assert request not in state.reserved_requests, changed("celery.worker.state.task_ready")

    with upstream("celery.worker.request.Request.revoked"):
        assert _compat.revoked_check(request)() is False
        state.revoked.add(request.id)
        try:
            assert _compat.revoked_check(request)() is True
        finally:
            state.revoked.discard(request.id)
    assert _compat.request_acknowledged(request), changed("Request.revoked (acknowledges)")

    handled.clear()
    with consumer.app.connection_for_write() as connection:
        again, queue = _received(consumer, handled, connection)
        with upstream("celery.worker.request.Request.reject(requeue=True)"):
            _compat.requeue(again)
        back = queue.get(no_ack=True)
    assert back is not None, changed("Request.reject(requeue=True) (the message goes back)")
    assert back.headers["id"] == again.id, changed("Request.reject(requeue=True)")


def test_celery_consumer_qos_widens_while_a_task_waits(consumer: Any) -> None:
    from kombu.common import QoS

    qos = _compat.consumer_qos(consumer)
    assert qos() is None, changed("Consumer.qos (None until the Tasks step starts)")
    told: list[int] = []

    def set_prefetch(*, prefetch_count: int) -> None:  # as Celery's Tasks step passes it
        told.append(prefetch_count)

    consumer.qos = QoS(set_prefetch, 8)
    with upstream("kombu.common.QoS.increment_eventually / decrement_eventually / update"):
        qos().increment_eventually()
        qos().update()
        qos().decrement_eventually()
        qos().update()
    assert told == [9, 8], changed("kombu.common.QoS (the prefetch count it sets)")
