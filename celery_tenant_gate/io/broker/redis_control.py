"""The control task on a Redis broker: the message kombu would write, in one round trip.

Publishing the control task through kombu cost the webhook about half a millisecond of
CPU a notification (``python -m bench webhook``): kombu's Redis transport builds a new
redis-py client for every message, and the publish goes through ``ensure``, declaring
and routing each time. Here Celery builds the task message
(``app.amqp.create_task_message``) and kombu's own serializer encodes it; the envelope
is then written as kombu's Redis transport writes it (the body base64-encoded, a fresh
``delivery_tag``, ``delivery_info``, ``LPUSH`` to the queue's list for priority 0: see
``kombu_redis_envelope`` in :mod:`celery_tenant_gate._compat`).
When the broker is the Redis of the shared store, the push is made in one Lua script
with the webhook's replay record: a verified notification costs one round trip, and
the record and the message are written together or not at all. Notifications answered
together go in one pipeline: one round trip for all of them.

It is used only where it is the same as kombu's path (see :func:`redis_control_queue`);
everywhere else (RabbitMQ, Sentinel, a route or setting that changes the message) the
control task goes through kombu.
"""

from __future__ import annotations

import base64
import math
import os
import threading
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import redis
from celery import signals
from kombu.compression import compress
from kombu.entity import maybe_delivery_mode
from kombu.serialization import dumps
from kombu.transport import redis as kombu_redis
from kombu.utils.json import dumps as json_dumps
from redis.exceptions import NoScriptError

from celery_tenant_gate._compat import (
    has_failover,
    kombu_redis_envelope,
    kombu_redis_list,
    kombu_redis_pool,
    redis_pool_settings,
    redis_round_trip,
    task_message,
)
from celery_tenant_gate.config.settings import CONTROL_TASK
from celery_tenant_gate.io.lua import lua_script

from .redis_frame import MessageFrame

#: Sets the replay record and queues the message, both or neither (see its header).
_KEEP = lua_script(__package__, "keep")

#: What identifies a Redis database in a redis-py connection pool's settings.
_IDENTITY = ("host", "port", "path", "db", "username", "password")


def task_kwargsrepr(amqp: Any, kwargs: Mapping[str, Any]) -> str:
    """The ``kwargsrepr`` header of a control task: a plain ``repr``, cut at Celery's
    limit (Celery's ``saferepr`` costs more than the rest of the message)."""
    text = repr(kwargs)
    if len(text) > amqp.kwargsrepr_maxsize:
        text = text[: amqp.kwargsrepr_maxsize - 3] + "..."
    return text


class RedisControlQueue:
    """The control queue of a Redis broker, written directly; build it with
    :func:`redis_control_queue`, which checks that this is what kombu would do."""

    def __init__(
        self,
        app: Any,
        *,
        queue: str,
        key: str,
        client: redis.Redis,
        same_as_store: bool,
    ) -> None:
        self.app = app
        #: The queue's name (``delivery_info.routing_key``; the exchange is Celery's
        #: anonymous one, as for any queue of a direct exchange without a routing key).
        self.queue = queue
        #: The list the message is pushed to (priority 0: the queue's own name, after
        #: kombu's ``global_keyprefix``).
        self.key = key
        #: A client of the broker's Redis.
        self.client = client
        #: The broker is the shared store's Redis: :meth:`keep` may be used.
        self.same_as_store = same_as_store
        conf = app.conf
        self._serializer = conf.task_serializer
        self._compression = conf.task_compression
        self._sent_event = bool(conf.task_send_sent_event)
        self._delivery_mode = maybe_delivery_mode(conf.task_default_delivery_mode)  # type: ignore[no-untyped-call]
        self._sha = client.register_script(_KEEP).sha
        self._frame: MessageFrame | None = None
        #: A connection of our own, made like the pool's, for :meth:`keep`'s round
        #: trips: redis-py's command path (a connection checked out of the pool, its
        #: retry wrapper, its metrics) cost more than the command itself. It is used
        #: under the lock, and made again in a forked process.
        self._connection: Any = None
        self._connection_pid = 0
        self._lock = threading.Lock()

    def observed(self) -> bool:
        """True when something watches task publishing: ``before_task_publish``,
        ``after_task_publish`` or ``task_sent`` receivers (tracing libraries add
        headers there), or ``task_send_sent_event``. Then only kombu's path does what
        they expect: do not write directly."""
        return bool(
            signals.before_task_publish.receivers
            or signals.after_task_publish.receivers
            or signals.task_sent.receivers
            or self._sent_event
        )

    def message(self, kwargs: Mapping[str, Any]) -> tuple[str, str]:
        """The control task with *kwargs*: its id, and the message as kombu's Redis
        transport stores it."""
        # Two uuid4s (the task id; kombu's delivery tag) from one read of urandom.
        random = os.urandom(32)
        task_id = str(uuid.UUID(bytes=random[:16], version=4))
        tag = str(uuid.UUID(bytes=random[16:], version=4))
        kwargsrepr = task_kwargsrepr(self.app.amqp, kwargs)
        frame = self._frame
        if frame is None or frame.pid != os.getpid():
            frame = self._frame = MessageFrame.of(self.envelope)
        args, _, *embed = frame.empty_body
        body = self._encode((args, dict(kwargs), *embed))[0]
        if frame.pieces is None:
            document, _ = self.envelope(task_id, kwargsrepr, tag, body)
            return task_id, str(json_dumps(document))  # type: ignore[no-untyped-call]
        return task_id, frame.fill(task_id, kwargsrepr, tag, body)

    def envelope(
        self, task_id: str, kwargsrepr: str, tag: str, body: str | None = None
    ) -> tuple[dict[str, Any], tuple[Any, ...]]:
        """The message kombu would store, as a dict, built the way Celery and kombu
        build it (*body*, base64, given: in place of the task's own), and the task's
        body before serializing: ``(args, kwargs, embed)``."""
        # celery.app.amqp.AMQP.send_task_message, then kombu's Producer.publish.
        headers, properties, task_body = task_message(
            self.app, task_id, CONTROL_TASK, kwargsrepr=kwargsrepr
        )
        properties["delivery_mode"] = self._delivery_mode
        encoded, content_type, content_encoding, compression = self._encode(task_body)
        if compression is not None:
            headers["compression"] = compression
        document = kombu_redis_envelope(
            encoded if body is None else body,
            content_type=content_type,
            content_encoding=content_encoding,
            headers=headers,
            properties=properties,
            queue=self.queue,
            delivery_tag=tag,
        )
        return document, task_body

    def _encode(self, body: tuple[Any, ...]) -> tuple[str, str, str, str | None]:
        """*body* serialized, compressed and base64-encoded as kombu does; with its
        content type and encoding, and the compression header (``None``: none)."""
        content_type, content_encoding, data = dumps(body, serializer=self._serializer)  # type: ignore[no-untyped-call]
        compression = None
        if self._compression:
            data, compression = compress(data, self._compression)  # type: ignore[no-untyped-call]
        raw = data.encode("utf-8") if isinstance(data, str) else data
        return base64.b64encode(raw).decode("ascii"), content_type, content_encoding, compression

    def push(self, kwargs: Mapping[str, Any]) -> str:
        """Queue one control task with *kwargs* (one ``LPUSH``); its task id."""
        task_id, message = self.message(kwargs)
        self.client.lpush(self.key, message)
        return task_id

    def keep(
        self, notifications: Sequence[tuple[str, float, Mapping[str, Any]]]
    ) -> list[bool | Exception]:
        """For each ``(record, ttl, kwargs)``: set the key *record* for *ttl* seconds
        unless it exists and, if it did not, queue a control task with *kwargs*: both
        or neither. All in one round trip (a pipeline of the script).

        For each, in order: True if recorded and queued now, False if the record was
        there already (nothing queued), or the error of that one (nothing written).
        Raises if the round trip failed. Only when :attr:`same_as_store`.
        """
        if not self.same_as_store:
            raise RuntimeError("keep() needs the broker to be the shared store's Redis")
        calls = []
        for record, ttl, kwargs in notifications:
            task_id, message = self.message(kwargs)
            calls.append((record, self.key, task_id, math.ceil(ttl), message))
        results: list[Any] = self._run(calls)
        if any(isinstance(result, NoScriptError) for result in results):
            # Not run (a restarted or flushed Redis): load the script, run those again.
            self.client.script_load(_KEEP)
            again = [c for c, r in zip(calls, results, strict=True) if isinstance(r, NoScriptError)]
            redone = iter(self._run(again))
            results = [next(redone) if isinstance(r, NoScriptError) else r for r in results]
        return [r if isinstance(r, Exception) else bool(r) for r in results]

    def _run(self, calls: list[tuple[str, str, str, int, str]]) -> list[Any]:
        """The script run for each call in one round trip: its answer, or the error
        Redis answered. A lost connection is tried again once through redis-py's own
        path (safe: the script knows its own attempt by the record's value)."""
        commands = [("EVALSHA", self._sha, 2, *call) for call in calls]
        try:
            return self._round_trip(commands)
        except (redis.ConnectionError, redis.TimeoutError):
            pipe = self.client.pipeline(transaction=False)
            for call in calls:
                pipe.evalsha(self._sha, 2, *call)
            return pipe.execute(raise_on_error=False)

    def _round_trip(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        if self._connection_pid != os.getpid():
            # A forked child: another thread of the parent may have held the lock at
            # the fork, and it would never be released here. A lock and a connection
            # of its own; the parent's connection is left alone, not closed.
            self._lock = threading.Lock()
            self._connection = None
            self._connection_pid = os.getpid()
        with self._lock:
            if self._connection is None:
                settings = redis_pool_settings(self.client.connection_pool)
                self._connection = settings.connection_type(**settings.kwargs)
            return redis_round_trip(self._connection, commands)


def redis_control_queue(app: Any, queue: str, store: redis.Redis) -> RedisControlQueue | None:
    """The control queue *queue* of *app*'s broker, to be written directly, or ``None``
    where kombu's path would do something else.

    Connects to the broker (once: call it when the first notification comes) and
    declares the queue through kombu, as kombu's first publish would. *store* is the
    client of the shared store: when it is the broker's Redis (same server, database
    and credentials), :meth:`RedisControlQueue.keep` writes both in one script.

    ``None`` (kombu's path, then) unless: task protocol 2; the control task's route
    names only the queue (no
    ``task_routes`` entry for it giving an exchange, routing key, priority or
    options), a queue of a direct exchange without expiry (``x-expires``); the broker
    is one URL (no failover list) of kombu's Redis transport with a plain connection
    pool (not Sentinel) and base64 bodies. Custom ``priority_steps``, ``sep`` and
    ``global_keyprefix`` transport options are honoured: the list is the one kombu's
    ``_put`` computes.
    """
    if not _plain_route(app, queue):
        return None
    with app.connection_for_write() as connection:
        if not isinstance(connection.transport, kombu_redis.Transport) or has_failover(connection):
            # RabbitMQ or another transport (never connected to here), or failover
            # URLs: kombu moves to the next one when one fails.
            return None
        channel = connection.default_channel
        pool = kombu_redis_pool(channel)
        if (
            type(pool) is not redis.ConnectionPool  # Sentinel's is a subclass
            or channel.body_encoding != "base64"
        ):
            return None
        app.amqp.queues[queue](channel).declare()
        key = kombu_redis_list(channel, queue)
        settings = redis_pool_settings(pool)
        broker_pool = redis.ConnectionPool(
            connection_class=settings.connection_type,
            max_connections=settings.max_connections,
            **settings.kwargs,
        )
    identity = _identity(broker_pool)
    same = identity is not None and identity == _identity(store.connection_pool)
    if same:
        broker_pool.disconnect()
    client = store if same else redis.Redis(connection_pool=broker_pool)
    return RedisControlQueue(app, queue=queue, key=key, client=client, same_as_store=same)


def _plain_route(app: Any, queue: str) -> bool:
    """True if Celery sends the control task to *queue* as it sends any task to a
    queue of a direct exchange: through the anonymous exchange, routing key the
    queue's name, with nothing added (see ``AMQP.send_task_message``)."""
    if app.conf.task_protocol != 2:
        return False
    route = app.amqp.router.route({"queue": queue}, CONTROL_TASK, (), {}, None)
    target = route.get("queue")
    if set(route) != {"queue"} or getattr(target, "name", None) != queue:
        return False
    exchange = target.exchange
    expires = target.expires is not None or "x-expires" in (target.queue_arguments or {})
    return exchange.type == "direct" and not exchange.delivery_mode and not expires


def _identity(pool: Any) -> tuple[Any, ...] | None:
    """Where *pool* connects to, and as whom; ``None`` if that cannot be told."""
    settings = redis_pool_settings(pool)
    kwargs = settings.kwargs
    if kwargs.get("credential_provider") is not None:
        return None
    return (settings.connection_type, *(kwargs.get(name) for name in _IDENTITY))
