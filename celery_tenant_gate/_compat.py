"""What the package relies on in Celery, kombu, py-amqp and redis-py that their
documentation does not promise: private attributes, undocumented internals, storage
layouts and raw protocol frames, in one place and nowhere else.

Each entry names the upstream module and attribute, the versions it was checked on
(those installed: Celery 5.7.0, kombu 5.7.0, py-amqp 5.4.2, redis-py 8.2.0) and the
first release that has it, from the upstream history. ``tests/test_compat.py`` fails,
naming the attribute and these versions, when one of them disappears or changes
shape: after an upgrade, look there first.

Documented API is used directly everywhere else: kombu's ``Connection``, ``Producer``,
``Queue`` and transport options; py-amqp's channel methods; the Celery consumer's
attributes listed in the "Extensions and Bootsteps" guide (``app``, ``hostname``,
``timer``, ``pool``, ``event_dispatcher``); ``app.amqp`` as its reference describes
it; redis-py's client, pipeline, pub/sub and scripts; and the data of a worker's task
request (``id``, ``task``, ``args``, ``kwargs``), as a task's own request has it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import redis

from celery_tenant_gate.model.held import HeldMessage

# -- py-amqp: raw AMQP 0-9-1 methods -------------------------------------------------

#: basic.publish, and its arguments (ticket, exchange, routing key, mandatory,
#: immediate) as py-amqp packs them: ``amqp.spec.Basic.Publish`` and the ``argsig`` of
#: ``amqp.channel.Channel._basic_publish`` (py-amqp >= 2.0; checked on 5.4.2).
BASIC_PUBLISH = (60, 40)
BASIC_PUBLISH_ARGS = "Bssbb"
#: basic.nack (delivery tag, multiple, requeue): RabbitMQ's extension; py-amqp knows
#: its id (``amqp.spec.Basic.Nack``, >= 2.0; checked on 5.4.2) but has no method that
#: sends it.
BASIC_NACK = (60, 120)
BASIC_NACK_ARGS = "Lbb"


def amqp_publish(
    channel: Any, message: Any, exchange: str, routing_key: str, *, mandatory: bool
) -> None:
    """Send basic.publish of *message* (a py-amqp ``Message``) on *channel*, as
    ``channel.basic_publish`` does, through ``AbstractChannel.send_method`` (py-amqp
    >= 0.9; checked on 5.4.2): without the wait for each confirm that kombu's
    ``confirm_publish`` gives ``basic_publish``, and without its socket poll before each
    publish (a fifth of a release's rate)."""
    channel.send_method(
        BASIC_PUBLISH, BASIC_PUBLISH_ARGS, (0, exchange, routing_key, mandatory, False), message
    )


def amqp_nack(channel: Any, delivery_tag: int, *, multiple: bool, requeue: bool = False) -> None:
    """Send basic.nack on *channel* (``send_method``, as :func:`amqp_publish`)."""
    channel.send_method(BASIC_NACK, BASIC_NACK_ARGS, (delivery_tag, multiple, requeue))


def amqp_keep_bytes(channel: Any) -> None:
    """Hand message bodies over as the bytes received: ``amqp.channel.Channel.auto_decode``
    (py-amqp >= 0.9; checked on 5.4.2) is read for each message; kombu opens channels
    with it on, which decodes a body to ``str`` by its content encoding."""
    channel.auto_decode = False


def amqp_on_confirms(
    channel: Any,
    *,
    on_ack: Callable[[int, bool], None],
    on_nack: Callable[[int, bool], None],
    on_return: Callable[[Any, str, str, Any], None],
) -> None:
    """Be told of *channel*'s publisher confirms and returned messages: the callback sets
    of ``amqp.channel.Channel.events`` (py-amqp >= 1.2; checked on 5.4.2). ``on_ack``
    and ``on_nack`` get (delivery tag, multiple); ``on_return`` gets (the error,
    exchange, routing key, the message)."""
    channel.events["basic_ack"].add(on_ack)
    channel.events["basic_nack"].add(on_nack)
    channel.events["basic_return"].add(on_return)


# -- kombu: connections --------------------------------------------------------------


def forget_declared(connection: Any) -> None:
    """Make ``maybe_declare`` declare again on *connection*: it skips what is in
    ``kombu.Connection.declared_entities`` (kombu >= 1.4; checked on 5.7.0)."""
    declared = getattr(connection, "declared_entities", None)
    if declared is not None:
        declared.clear()


def has_failover(connection: Any) -> bool:
    """Whether *connection* has failover URLs (``broker_url`` a list): the list
    ``kombu.Connection.alt`` (kombu >= 2.5; checked on 5.7.0)."""
    return bool(connection.alt)


# -- kombu: the Redis transport's storage --------------------------------------------

#: ``kombu.transport.redis.Channel.sep`` (kombu >= 2.0; checked on 5.7.0): joins a
#: queue's name and a priority step in the name of that step's list, and the parts of
#: a binding.
KOMBU_REDIS_SEP = "\x06\x16"
#: ``kombu.transport.redis.PRIORITY_STEPS`` (kombu >= 2.2; checked on 5.7.0): a queue's
#: lists, one a step; step 0's list has the queue's own name.
KOMBU_REDIS_PRIORITY_STEPS = (0, 3, 6, 9)
#: ``kombu.transport.redis.Channel.keyprefix_queue`` (kombu >= 2.2; checked on 5.7.0):
#: the set of an exchange's bindings, each ``routing key, pattern, queue`` joined by
#: :data:`KOMBU_REDIS_SEP`. The release script of ``io/broker/redis_held.py`` reads it.
KOMBU_REDIS_BINDINGS = "_kombu.binding.%s"


def kombu_redis_list(channel: Any, queue: str) -> str:
    """The Redis list kombu's Redis transport pushes *queue*'s messages of priority 0
    to (``LPUSH``; consumers pop the other end): ``Channel._q_for_pri`` (kombu >= 2.1.8)
    after ``Channel.global_keyprefix`` (>= 5.2); checked on 5.7.0."""
    return str(channel.global_keyprefix + channel._q_for_pri(queue, 0))


def kombu_redis_pool(channel: Any) -> Any:
    """The redis-py connection pool of a kombu Redis channel: ``Channel.pool`` (kombu
    >= 2.5; checked on 5.7.0)."""
    return channel.pool


def kombu_redis_envelope(
    body: str,
    *,
    content_type: str,
    content_encoding: str,
    headers: dict[str, Any],
    properties: dict[str, Any],
    queue: str,
    delivery_tag: str,
) -> dict[str, Any]:
    """A message as kombu's Redis transport stores it (as JSON) when it is published
    through the default exchange to *queue* with priority 0, *body* already
    base64-encoded: ``kombu.transport.virtual.Channel.prepare_message``, then
    ``basic_publish`` (``_inplace_augment_message``, kombu >= 4.0; the layout since
    3.0), then ``kombu.transport.redis.Channel._put``; checked on 5.7.0. *properties* is
    completed in place, in kombu's order (the bytes stored are the same)."""
    properties["delivery_info"] = {"exchange": "", "routing_key": queue}
    properties["priority"] = 0
    properties["body_encoding"] = "base64"
    properties["delivery_tag"] = delivery_tag
    return {
        "body": body,
        "content-encoding": content_encoding,
        "content-type": content_type,
        "headers": headers,
        "properties": properties,
    }


def kombu_redis_message(raw: bytes | str) -> HeldMessage:
    """A message stored by kombu's Redis transport (see :func:`kombu_redis_envelope`)
    as a :class:`HeldMessage`."""
    envelope: dict[str, Any] = json.loads(raw)
    properties = dict(envelope.get("properties") or {})
    body: Any = envelope.get("body", "")
    if properties.get("body_encoding") == "base64":
        body = base64.b64decode(body)
    elif isinstance(body, str):
        body = body.encode()
    return HeldMessage(
        headers=dict(envelope.get("headers") or {}),
        body=bytes(body),
        content_type=str(envelope.get("content-type") or ""),
        content_encoding=str(envelope.get("content-encoding") or ""),
        properties=properties,
    )


# -- redis-py: connection pools and connections --------------------------------------


class PoolSettings(NamedTuple):
    """How a redis-py pool makes its connections."""

    connection_type: type[Any]
    kwargs: dict[str, Any]
    max_connections: int | None


def redis_pool_settings(pool: Any) -> PoolSettings:
    """``redis.ConnectionPool.connection_class``, ``connection_kwargs`` and
    ``max_connections`` (redis-py >= 2.4; checked on 8.2.0): what its constructor was
    given, to make a pool or a connection like its own, or tell where it connects."""
    return PoolSettings(pool.connection_class, dict(pool.connection_kwargs), pool.max_connections)


def redis_round_trip(connection: Any, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Send *commands* on a redis-py connection in one write and read their answers, an
    error answer (``ResponseError``) in place of its result: ``Connection.pack_commands``
    (redis-py >= 2.10), ``send_packed_command`` and ``read_response`` (>= 2.4); checked
    on 8.2.0. On any other failure the connection is disconnected and it raises."""
    try:
        connection.send_packed_command(connection.pack_commands(commands))
        results: list[Any] = []
        for _ in commands:
            try:
                results.append(connection.read_response())
            except redis.ResponseError as error:
                results.append(error)
    except BaseException:
        connection.disconnect()
        raise
    return results


# -- Celery: task messages -----------------------------------------------------------


def task_message(
    app: Any, task_id: str, name: str, *, kwargsrepr: str
) -> tuple[dict[str, Any], dict[str, Any], tuple[Any, ...]]:
    """The headers, properties and body ``(args, kwargs, embed)`` of the message of task
    *name* without arguments, made by the documented ``app.amqp.create_task_message``;
    what that returns, ``celery.app.amqp.task_message`` (headers, properties, body,
    sent_event: Celery >= 4.0; checked on 5.7.0), is not documented."""
    message = app.amqp.create_task_message(
        task_id, name, (), {}, argsrepr="()", kwargsrepr=kwargsrepr
    )
    return message.headers, message.properties, tuple(message.body)


def signature_from_request(task: Any, request: Any, **options: Any) -> Any:
    """The signature that sends *request* (a task's own request) again with *options*,
    keeping its id, retries, expiry, priority, links and route, as ``Task.retry`` does:
    ``celery.app.task.Task.signature_from_request`` (Celery >= 4.0; checked on 5.7.0)."""
    return task.signature_from_request(request, **options)


# -- Celery: the worker's consumer and task requests ---------------------------------


def consumer_qos(consumer: Any) -> Callable[[], Any]:
    """``Consumer.qos``: the consumer's prefetch count, a :class:`kombu.common.QoS`
    made anew each time the Tasks bootstep starts (None before; Celery >= 3.1; checked
    on 5.7.0). Widened by one while a task waits in the worker, as Celery's own ETA
    tasks do (``increment_eventually``/``decrement_eventually``). Returns a getter."""

    def qos() -> Any:
        return getattr(consumer, "qos", None)

    return qos


def task_handler(consumer: Any) -> Callable[[Any], Any]:
    """``celery.worker.consumer.Consumer.on_task_request`` (Celery >= 3.1; checked on
    5.7.0): where the consumer sends each task request on its way to the pool, straight
    from the broker (the strategies take it when the Tasks bootstep starts) and after
    the ETA timer or a rate-limit bucket."""
    handler: Callable[[Any], Any] = consumer.on_task_request
    return handler


def set_task_handler(consumer: Any, handler: Callable[[Any], Any]) -> None:
    """Put *handler* in place of :func:`task_handler` (before the Tasks bootstep starts)."""
    consumer.on_task_request = handler


def worker_task_ready() -> Callable[[Any], None]:
    """``celery.worker.state.task_ready`` (Celery >= 2.0; checked on 5.7.0): called with a
    request the worker will not run, it forgets it, as Celery does when a task is done."""
    # Imported here: a web process that loads this module does not load Celery's worker.
    from celery.worker import state  # noqa: PLC0415

    ready: Callable[[Any], None] = state.task_ready
    return ready


def request_message(request: Any) -> Any:
    """The kombu message of a worker's task request: ``celery.worker.request.Request.message``
    (Celery >= 4.4; checked on 5.7.0)."""
    return request.message


def request_acknowledged(request: Any) -> bool:
    """Whether the worker acknowledged *request*'s message: ``Request.acknowledged``, a
    plain attribute (Celery >= 4.0; checked on 5.7.0)."""
    return bool(request.acknowledged)


def mark_acknowledged(request: Any) -> None:
    """Tell the worker that *request*'s message was acknowledged (not by it)."""
    request.acknowledged = True


def revoked_check(request: Any) -> Callable[[], bool]:
    """``Request.revoked`` (Celery >= 4.0; checked on 5.7.0): when called, True if the
    task is revoked or expired, which it then acknowledges and records."""
    check: Callable[[], bool] = request.revoked
    return check


def requeue(request: Any) -> None:
    """Give *request*'s message back to the broker: ``Request.reject(requeue=True)``
    (Celery >= 4.0; checked on 5.7.0)."""
    request.reject(requeue=True)


def live_delivery_info(request: Any) -> dict[str, Any]:
    """``Request.delivery_info``: the very dict the task's ``self.request.delivery_info``
    is made from, so a change to it reaches the task (Celery >= 4.4; checked on 5.7.0)."""
    info: dict[str, Any] = request.delivery_info
    return info
