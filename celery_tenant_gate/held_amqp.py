"""Held messages in tenant queues on a RabbitMQ broker (kombu's py-amqp transport).

A tenant queue (``tenant.<id>``) is a durable classic queue that no worker consumes.
Every call opens its own connection from the factory, and its own channels, and
releases them before returning.

Moving works on the raw AMQP message: the body bytes are never decoded, and the
content type, encoding, headers and properties (priority, delivery mode, ...) are
copied as they are. A source message is acknowledged only once the broker has
confirmed its copy (publisher confirms, a batch at a time), so a crash at any point
can duplicate a message but never lose one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

from kombu.connection import Connection

from .carrier import ROUTE_HEADER
from .errors import TenantGateError
from .held import HeldMessage, OnMoved
from .hooks import TaskRef

__all__ = ["RELEASED_HEADER", "AmqpHeldQueues", "HeldMessage", "HeldReleaseError"]

#: Set on every released message: the marker given to :meth:`AmqpHeldQueues.release`.
RELEASED_HEADER = "tenant_gate_released"

_NOT_FOUND = 404
# AMQP properties that HeldMessage keeps in fields of their own.
_OWN_FIELDS = ("application_headers", "content_type", "content_encoding")
_MAX_PREFETCH = 65535
# basic.publish, sent with send_method rather than channel.basic_publish: with the
# transport option confirm_publish that waits for each confirm, and otherwise it polls
# the socket before every publish, which costs a fifth of the release rate.
_BASIC_PUBLISH = (60, 40)

_Sent = tuple[int, Any, tuple[str, str]]  # confirm sequence number, source, route


class HeldReleaseError(TenantGateError):
    """Some held messages could not be released: their route leads nowhere.

    Those messages are still in the tenant queue, in their order; ``moved`` messages
    were released; ``routes`` are the (exchange, routing key) pairs at fault.
    """

    def __init__(self, queue: str, moved: int, routes: list[tuple[str, str]]) -> None:
        shown = ", ".join(f"exchange={ex!r} routing_key={rk!r}" for ex, rk in routes)
        super().__init__(
            f"tenant queue {queue}: {moved} message(s) released, then stopped: "
            f"no queue takes messages routed to {shown}; they stay held"
        )
        self.queue = queue
        self.moved = moved
        self.routes = routes


def _ref(raw: Any, route: tuple[str, str]) -> TaskRef:
    headers = (raw.properties or {}).get("application_headers") or {}
    return TaskRef(str(headers.get("id", "")), str(headers.get("task", "")), route[1])


def held_from_amqp(raw: Any) -> HeldMessage:
    """A py-amqp message (from ``basic_get`` or a consumer) as a :class:`HeldMessage`."""
    properties = dict(raw.properties or {})
    headers = dict(properties.get("application_headers") or {})
    content_type = properties.get("content_type") or ""
    content_encoding = properties.get("content_encoding") or ""
    for name in _OWN_FIELDS:
        properties.pop(name, None)
    body = raw.body
    if isinstance(body, str):
        body = body.encode(content_encoding or "utf-8")
    return HeldMessage(
        headers=headers,
        body=bytes(body),
        content_type=str(content_type),
        content_encoding=str(content_encoding),
        properties=properties,
    )


class _Confirms:
    """Publisher-confirm bookkeeping for one channel: which publishes the broker has
    yet to confirm, and which it refused or returned (unroutable)."""

    def __init__(self, channel: Any) -> None:
        self.next_seq = 1
        self.pending: set[int] = set()
        self.failed: set[int] = set()
        self.returned: list[tuple[str, str, Any]] = []
        channel.events["basic_ack"].add(self._on_ack)
        channel.events["basic_nack"].add(self._on_nack)
        channel.events["basic_return"].add(self._on_return)
        channel.confirm_select()

    def sent(self) -> int:
        seq = self.next_seq
        self.next_seq += 1
        self.pending.add(seq)
        return seq

    def _settle(self, tag: int, multiple: bool) -> set[int]:
        done = {seq for seq in self.pending if seq <= tag} if multiple else {tag}
        self.pending -= done
        return done

    def _on_ack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple)

    def _on_nack(self, tag: int, multiple: bool) -> None:
        self.failed |= self._settle(tag, multiple)

    def _on_return(self, exc: Any, exchange: str, routing_key: str, message: Any) -> None:
        # RabbitMQ sends basic.return before the basic.ack of the same message.
        self.returned.append((exchange, routing_key, message))


def _open_channel(connection: Connection) -> Any:
    # kombu leaves Connection.channel unannotated.
    opener: Callable[[], Any] = connection.channel
    channel = opener()
    # Otherwise py-amqp turns a body into str by its content_encoding: bytes must stay
    # bytes, to be copied as they are (and decoding costs time).
    channel.auto_decode = False
    return channel


def _close_channel(channel: Any) -> None:
    # Closing a channel gives its unacked messages back to their queue, in place.
    with suppress(Exception):
        channel.close()


def _is_not_found(exc: BaseException) -> bool:
    return getattr(exc, "reply_code", None) == _NOT_FOUND


class _Consumer:
    """A channel consuming one queue into a buffer, oldest first."""

    def __init__(self, connection: Connection, queue: str, prefetch: int) -> None:
        self.channel: Any = _open_channel(connection)
        self.buffer: list[Any] = []
        self.cancelled = False
        self.channel.basic_qos(0, min(prefetch, _MAX_PREFETCH), False)
        self.tag: str = self.channel.basic_consume(
            queue, callback=self.buffer.append, on_cancel=self._on_cancel, no_ack=False
        )

    def _on_cancel(self, tag: str) -> None:
        # The broker cancels the consumer when the queue is deleted.
        self.cancelled = True

    def fill(self, want: int, wait: float) -> None:
        """Read deliveries until *want* are buffered or none came for *wait* seconds."""
        while len(self.buffer) < want and not self.cancelled:
            try:
                self.channel.connection.drain_events(timeout=wait)
            except TimeoutError:
                return

    def take(self, count: int) -> list[Any]:
        taken = self.buffer[:count]
        del self.buffer[:count]
        return taken

    def stop(self) -> None:
        """Cancel the consumer. Deliveries sent before the broker's cancel-ok are
        buffered while waiting for it, so none is in flight afterwards."""
        if not self.cancelled:
            self.channel.basic_cancel(self.tag)
            self.cancelled = True


class AmqpHeldQueues:
    """Held messages in RabbitMQ tenant queues.

    *connection_factory* returns a :class:`kombu.Connection` to the broker (py-amqp
    transport), for example ``app.connection_for_write`` or ``app.pool.acquire``; it
    is used as a context manager, so each call releases its connection. A held
    message without the ``tenant_gate_route`` header is released to
    *default_queue*, through the default exchange.
    """

    def __init__(
        self,
        connection_factory: Callable[[], Connection],
        *,
        default_queue: str = "celery",
        confirm_timeout: float = 30.0,
        idle_wait: float = 0.05,
    ) -> None:
        self.connection_factory = connection_factory
        self.default_queue = default_queue
        self.confirm_timeout = confirm_timeout
        self.idle_wait = idle_wait

    @contextmanager
    def _connection(self) -> Iterator[Connection]:
        with self.connection_factory() as connection:
            driver = connection.transport.driver_type
            if driver != "amqp":
                raise TypeError(f"AmqpHeldQueues needs an AMQP broker, not {driver!r}")
            connection.ensure_connection(max_retries=3)
            yield connection

    def _ready(self, connection: Connection, queue: str) -> int | None:
        """Messages ready in *queue*, or None if it does not exist (it is not created)."""
        channel = _open_channel(connection)
        try:
            _, ready, _ = channel.queue_declare(queue, passive=True)
        except connection.channel_errors as exc:
            if _is_not_found(exc):
                return None  # the broker has closed the channel
            raise
        _close_channel(channel)
        return int(ready)

    def _exchange_exists(self, connection: Connection, exchange: str) -> bool:
        channel = _open_channel(connection)
        try:
            channel.exchange_declare(exchange, "direct", passive=True)
        except connection.channel_errors as exc:
            if _is_not_found(exc):
                return False
            raise
        _close_channel(channel)
        return True

    def count(self, queue: str) -> int:
        """Messages waiting in *queue*; 0 if it does not exist (it is not created).

        Messages another client has received but not acknowledged are not counted.
        """
        with self._connection() as connection:
            return self._ready(connection, queue) or 0

    def peek(self, queue: str, limit: int = 100) -> list[HeldMessage]:
        """The oldest *limit* messages of *queue*, oldest first.

        They are received unacknowledged and given back, so afterwards the queue
        holds the same messages in the same order (RabbitMQ puts requeued messages
        back in place); they are flagged as redelivered.
        """
        found: list[HeldMessage] = []
        with self._connection() as connection:
            if not self._ready(connection, queue):
                return found
            channel = _open_channel(connection)
            try:
                while len(found) < limit:
                    raw = channel.basic_get(queue, no_ack=False)
                    if raw is None:
                        break
                    found.append(held_from_amqp(raw))
            finally:
                _close_channel(channel)
        return found

    def destination(self, message: HeldMessage) -> tuple[str, str]:
        """The exchange and routing key *message* was meant for."""
        return self._route(message.headers)

    def _route(self, headers: dict[str, Any]) -> tuple[str, str]:
        route = headers.get(ROUTE_HEADER)
        if isinstance(route, dict):
            exchange, routing_key = route.get("exchange"), route.get("routing_key")
            if isinstance(exchange, str) and isinstance(routing_key, str):
                return exchange, routing_key
        return "", self.default_queue

    def release(
        self, queue: str, *, marker: str, batch: int = 500, on_moved: OnMoved | None = None
    ) -> int:
        """Move every message of *queue* to where it was meant to go, oldest first.

        The destination is the exchange and routing key in the message's
        ``tenant_gate_route`` header (the default exchange and *default_queue* if it
        has none). The copy has the same body, content type, encoding, properties and
        headers, plus the header ``tenant_gate_released`` = *marker* (give each release
        its own). It moves until the queue is empty or a message it moved itself comes
        back (a task held again at once, because its tenant still does not run): that
        one and those after it wait for the next release, so a release always ends.
        0 for a queue that does not exist.

        Raises :class:`HeldReleaseError` if a message's route leads to no queue (or
        to a missing exchange). The release stops at the end of that batch: such
        messages stay at the head of the tenant queue, in order (after a missing
        exchange, so does the rest of the batch); the others were moved.

        *on_moved*, if given, is told the tasks of each batch once the broker has them.
        """
        if batch < 1:
            raise ValueError(f"batch must be at least 1, not {batch}")
        with self._connection() as connection:
            if not self._ready(connection, queue):
                return 0
            consumer = _Consumer(connection, queue, prefetch=2 * batch)
            try:
                return self._release(
                    connection, consumer, queue=queue, marker=marker, batch=batch, told=on_moved
                )
            finally:
                _close_channel(consumer.channel)

    def _release(
        self,
        connection: Connection,
        consumer: _Consumer,
        *,
        queue: str,
        marker: str,
        batch: int,
        told: OnMoved | None = None,
    ) -> int:
        channel = consumer.channel
        confirms = _Confirms(channel)
        known_exchanges = {""}
        moved = 0
        came_back = False
        while not came_back:
            consumer.fill(batch, self.idle_wait)
            if not consumer.buffer:
                if consumer.cancelled or not self._ready(connection, queue):
                    consumer.stop()
                    if not consumer.buffer:
                        return moved
                continue
            sent: list[_Sent] = []
            unroutable: list[tuple[str, str]] = []
            for raw in consumer.take(batch):
                # The copy is built from the raw properties, so none can be left out.
                properties = dict(raw.properties or {})
                headers = dict(properties.get("application_headers") or {})
                if headers.get(RELEASED_HEADER) == marker:
                    # One this release moved, held again at once (its tenant still
                    # does not run): the release has gone round; stop, so that it
                    # ends. It and what follows stay held, in order.
                    came_back = True
                    break
                exchange, routing_key = self._route(headers)
                if exchange not in known_exchanges:
                    # Publishing to a missing exchange would close the channel.
                    if not self._exchange_exists(connection, exchange):
                        unroutable.append((exchange, routing_key))
                        break
                    known_exchanges.add(exchange)
                headers[RELEASED_HEADER] = marker
                properties["application_headers"] = headers
                copy = type(raw)(raw.body, **properties)
                channel.send_method(
                    _BASIC_PUBLISH, "Bssbb", (0, exchange, routing_key, True, False), copy
                )
                sent.append((confirms.sent(), raw, (exchange, routing_key)))
            failed = self._settle(channel, confirms, sent)
            moved += len(sent) - len(failed)
            if told is not None:
                told([_ref(raw, route) for _, raw, route in sent if route not in failed])
            if failed or unroutable:
                # What was not acked goes back to the tenant queue, in place, when the
                # channel closes.
                raise HeldReleaseError(queue, moved, sorted(set(failed + unroutable)))
        # Deliveries not acknowledged go back to the tenant queue, in place, when the
        # channel closes.
        consumer.stop()
        return moved

    def _settle(
        self, channel: Any, confirms: _Confirms, sent: list[_Sent]
    ) -> list[tuple[str, str]]:
        """Wait for the broker to confirm *sent*, then ack the source of every copy it
        took. Returns the routes of the copies it returned or refused; their sources
        stay unacked."""
        if not sent:
            return []
        deadline = time.monotonic() + self.confirm_timeout
        while confirms.pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"RabbitMQ did not confirm {len(confirms.pending)} released "
                    f"message(s) within {self.confirm_timeout}s"
                )
            with suppress(TimeoutError):
                channel.connection.drain_events(timeout=remaining)
        bad = {seq for seq, _, _ in sent if seq in confirms.failed}
        for exchange, routing_key, returned in confirms.returned:
            # A return carries no sequence number: find its copy by route and body.
            for seq, raw, route in sent:
                if (
                    seq not in bad
                    and route == (exchange, routing_key)
                    and bytes(raw.body) == bytes(returned.body)
                ):
                    bad.add(seq)
                    break
        confirms.returned.clear()
        confirms.failed.clear()
        if not bad:
            channel.basic_ack(sent[-1][1].delivery_tag, multiple=True)
            return []
        for seq, raw, _ in sent:
            if seq not in bad:
                channel.basic_ack(raw.delivery_tag)
        return [route for seq, _, route in sent if seq in bad]

    def drain(self, queue: str, sink: Callable[[list[HeldMessage]], None], batch: int = 500) -> int:
        """Remove every message of *queue*, handing them to *sink* a batch at a time,
        oldest first; a batch is acknowledged only after *sink* returned.

        If *sink* raises, that batch and everything after it stay in the queue, in
        order, and the exception propagates. Returns how many were removed; 0 for a
        queue that does not exist.
        """
        if batch < 1:
            raise ValueError(f"batch must be at least 1, not {batch}")
        total = 0
        with self._connection() as connection:
            if not self._ready(connection, queue):
                return 0
            consumer = _Consumer(connection, queue, prefetch=2 * batch)
            try:
                while True:
                    consumer.fill(batch, self.idle_wait)
                    if not consumer.buffer:
                        if consumer.cancelled or not self._ready(connection, queue):
                            consumer.stop()
                            if not consumer.buffer:
                                return total
                        continue
                    raws = consumer.take(batch)
                    sink([held_from_amqp(raw) for raw in raws])
                    consumer.channel.basic_ack(raws[-1].delivery_tag, multiple=True)
                    total += len(raws)
            finally:
                # A clean close: the broker has the acks before the call returns.
                _close_channel(consumer.channel)
