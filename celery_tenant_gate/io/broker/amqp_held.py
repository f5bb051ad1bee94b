"""Held messages in tenant queues on a RabbitMQ broker (kombu's py-amqp transport).

A tenant queue (``tenant.<id>``) is a durable classic queue that no worker consumes.
Every call opens its own connection from the factory, and its own channels, and
releases them before returning.

A message held through the hold exchange (see :mod:`.holding`) is released by the
broker itself: the release receives it and rejects it, and its tenant queue
dead-letters it, by its routing key, to the queue it was meant for. Nothing is
re-published: the client only reads. Other messages (destination not known at hold
time, or ``dead_letter=False``) are moved: the raw AMQP message is
re-published (the body bytes are never decoded; content type, encoding, headers and
properties are copied as they are), and the source is acknowledged only once the
broker has confirmed its copy (publisher confirms, a batch at a time). Either way a
crash of the releasing process can duplicate a message but never lose one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

from kombu.connection import Connection

from celery_tenant_gate.model.carrier import HELD_COUNT_HEADER, ROUTE_HEADER
from celery_tenant_gate.model.errors import TenantGateError
from celery_tenant_gate.model.held import HeldMessage, OnMoved, TaskRef

from .holding import DEAD_LETTER_ARGUMENTS, HOLD_EXCHANGE, RELEASE_EXCHANGE

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
# basic.nack (py-amqp has no method for it): with multiple and without requeue it
# rejects every delivery up to a tag, and the tenant queue dead-letters them.
_BASIC_NACK = (60, 120)
_PRECONDITION_FAILED = 406

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


def _holds(headers: dict[str, Any]) -> int:
    """How many times a message was held (the header each hold counts up)."""
    try:
        return int(headers.get(HELD_COUNT_HEADER) or 0)
    except (TypeError, ValueError):
        return 0


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
        dead_letter: bool = True,
    ) -> None:
        self.connection_factory = connection_factory
        self.default_queue = default_queue
        self.confirm_timeout = confirm_timeout
        self.idle_wait = idle_wait
        self.dead_letter = dead_letter

    @contextmanager
    def _connection(self) -> Iterator[Connection]:
        with self.connection_factory() as connection:
            driver = connection.transport.driver_type
            if driver != "amqp":
                raise TypeError(f"AmqpHeldQueues needs an AMQP broker, not {driver!r}")
            connection.ensure_connection(max_retries=3)
            yield connection

    def _probe(
        self,
        connection: Connection,
        ask: Callable[[Any], Any],
        refused: frozenset[int] = frozenset({_NOT_FOUND}),
    ) -> tuple[bool, Any]:
        """Run *ask* on a channel of its own: (True, its answer), or (False, None) when
        the broker refuses it with one of the *refused* codes (the broker then closes
        that channel; any other error is raised)."""
        channel = _open_channel(connection)
        try:
            answer = ask(channel)
        except connection.channel_errors as exc:
            if getattr(exc, "reply_code", None) in refused:
                return False, None
            raise
        _close_channel(channel)
        return True, answer

    def _ready(self, connection: Connection, queue: str) -> int | None:
        """Messages ready in *queue*, or None if it does not exist (it is not created)."""
        found, answer = self._probe(connection, lambda ch: ch.queue_declare(queue, passive=True))
        return int(answer[1]) if found else None

    def _exchange_exists(self, connection: Connection, exchange: str) -> bool:
        return self._probe(
            connection, lambda ch: ch.exchange_declare(exchange, "direct", passive=True)
        )[0]

    def _bind_for_release(self, connection: Connection, queue: str) -> bool:
        """Bind *queue* to the release exchange by its own name, so that released
        messages reach it; False if it does not exist (dead-lettering to it would drop
        them)."""

        def bind(channel: Any) -> None:
            channel.exchange_declare(RELEASE_EXCHANGE, "direct", durable=True, auto_delete=False)
            channel.queue_bind(queue, RELEASE_EXCHANGE, routing_key=queue)

        return self._probe(connection, bind)[0]

    def _dead_letters(self, connection: Connection, queue: str) -> bool:
        """Whether *queue* dead-letters to the release exchange, as a hold through the
        hold exchange declares it (a re-declare with other arguments is refused)."""
        return self._probe(
            connection,
            lambda ch: ch.queue_declare(
                queue, durable=True, auto_delete=False, arguments=dict(DEAD_LETTER_ARGUMENTS)
            ),
            refused=frozenset({_PRECONDITION_FAILED, _NOT_FOUND}),
        )[0]

    def count(self, queue: str) -> int:
        """Messages waiting in *queue*; 0 if it does not exist (it is not created).

        Messages another client has received but not acknowledged are not counted.
        """
        with self._connection() as connection:
            return self._ready(connection, queue) or 0

    def counts(self, queues: Sequence[str]) -> dict[str, int]:
        """Messages waiting in each of *queues*, over one connection (missing: 0)."""
        with self._connection() as connection:
            return {queue: self._ready(connection, queue) or 0 for queue in queues}

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
        self, queue: str, *, marker: str, batch: int = 5000, on_moved: OnMoved | None = None
    ) -> int:
        """Move every message of *queue* to where it was meant to go, oldest first.

        A message held through the hold exchange goes to the queue its routing key
        names: it is rejected, and the broker dead-letters it there. Any other goes
        to the exchange and routing key in its ``tenant_gate_route`` header (the
        default exchange and *default_queue* if it has none), as a copy with the same
        body, content type, encoding, properties and headers, plus the header
        ``tenant_gate_released`` = *marker* (give each release its own). It moves
        until the queue is empty or a message it moved itself comes back (a task held
        again at once, because its tenant still does not run): that one and those
        after it wait for the next release, so a release always ends. 0 for a queue
        that does not exist.

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
            rejecting = self.dead_letter and self._dead_letters(connection, queue)
            consumer = _Consumer(connection, queue, prefetch=2 * batch)
            try:
                run = _Release(
                    self,
                    connection,
                    consumer,
                    queue=queue,
                    marker=marker,
                    rejecting=rejecting,
                    told=on_moved,
                )
                return run.until_done(batch)
            finally:
                _close_channel(consumer.channel)

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


class _Release:
    """One release of one tenant queue, batch after batch, in the order received.

    Messages held through the hold exchange are rejected in runs (one ``basic.nack``
    per run) and the broker dead-letters them where they were meant to go; others are
    re-published with confirms. A run is settled before the next one starts, so that
    a ``multiple`` ack or nack never covers a delivery of the other kind.
    """

    def __init__(
        self,
        owner: AmqpHeldQueues,
        connection: Connection,
        consumer: _Consumer,
        *,
        queue: str,
        marker: str,
        rejecting: bool,
        told: OnMoved | None = None,
    ) -> None:
        self.owner = owner
        self.told = told
        self.connection = connection
        self.consumer = consumer
        self.channel = consumer.channel
        self.queue = queue
        self.marker = marker
        self.rejecting = rejecting
        self.confirms = _Confirms(self.channel)
        self.known_exchanges = {""}
        self.known_queues: dict[str, bool] = {}
        # Task ids this release dead-lettered, with how many times each was held.
        self.moved_ids: dict[str, int] = {}
        self.moved = 0
        # Routes of copies the broker returned or refused; their sources stay held.
        self.failed: list[tuple[str, str]] = []

    def until_done(self, batch: int) -> int:
        while True:
            self.consumer.fill(batch, self.owner.idle_wait)
            if not self.consumer.buffer:
                if self.consumer.cancelled or not self.owner._ready(self.connection, self.queue):
                    self.consumer.stop()
                    if not self.consumer.buffer:
                        return self._synced()
                continue
            if self._batch(self.consumer.take(batch)):
                # Deliveries not settled go back to the tenant queue, in place, when
                # the channel closes.
                self.consumer.stop()
                return self._synced()

    def _synced(self) -> int:
        """The count moved, once the tenant queue has dead-lettered what was rejected.

        A nack is not answered; a declare on the same channel reaches the queue after
        it, so its answer means the queue has handed every rejected message on.
        """
        if self.moved_ids:
            with suppress(*self.connection.channel_errors):
                self.channel.queue_declare(self.queue, passive=True)
        return self.moved

    def _batch(self, raws: list[Any]) -> bool:
        """Release *raws*; True if the release has gone round (stop after them)."""
        sent: list[_Sent] = []
        rejected: list[Any] = []
        unroutable: list[tuple[str, str]] = []
        came_back = False
        for raw in raws:
            # A copy is built from the raw properties, so none can be left out.
            properties = dict(raw.properties or {})
            headers = dict(properties.get("application_headers") or {})
            task_id = str(headers.get("id", ""))
            holds = _holds(headers)
            if headers.get(RELEASED_HEADER) == self.marker or holds > self.moved_ids.get(
                task_id, holds
            ):
                # One this release moved, held again at once (its tenant still does
                # not run: the hold kept the marker, or counted one hold more): the
                # release has gone round; stop, so that it ends. It and what follows
                # stay held, in order. (A second copy of a task, left by a crash, has
                # the same count, and is moved like any other.)
                came_back = True
                break
            if self._rejectable(raw):
                self._settle(sent)
                sent = []
                rejected.append(raw)
                self.moved_ids[task_id] = holds
                continue
            self._reject(rejected)
            rejected = []
            exchange, routing_key = self.owner._route(headers)
            if exchange not in self.known_exchanges:
                # Publishing to a missing exchange would close the channel.
                if not self.owner._exchange_exists(self.connection, exchange):
                    unroutable.append((exchange, routing_key))
                    break
                self.known_exchanges.add(exchange)
            headers[RELEASED_HEADER] = self.marker
            properties["application_headers"] = headers
            copy = type(raw)(raw.body, **properties)
            self.channel.send_method(
                _BASIC_PUBLISH, "Bssbb", (0, exchange, routing_key, True, False), copy
            )
            sent.append((self.confirms.sent(), raw, (exchange, routing_key)))
        self._reject(rejected)
        self._settle(sent)
        if self.failed or unroutable:
            # What was not settled goes back to the tenant queue, in place, when the
            # channel closes.
            raise HeldReleaseError(self.queue, self.moved, sorted(set(self.failed + unroutable)))
        return came_back

    def _rejectable(self, raw: Any) -> bool:
        """Whether the broker can release *raw* by dead-lettering: held through the
        hold exchange into a queue that dead-letters, meant for a queue that exists
        and is bound for releases (dead-lettering to nowhere would drop it)."""
        info = raw.delivery_info or {}
        if not self.rejecting or info.get("exchange") != HOLD_EXCHANGE:
            return False
        destination = str(info.get("routing_key") or "")
        if destination not in self.known_queues:
            self.known_queues[destination] = bool(destination) and self.owner._bind_for_release(
                self.connection, destination
            )
        return self.known_queues[destination]

    def _reject(self, run: list[Any]) -> None:
        if not run:
            return
        if self.failed:
            # A delivery before these stays unsettled (to stay held): no "multiple".
            for raw in run:
                self.channel.send_method(_BASIC_NACK, "Lbb", (raw.delivery_tag, False, False))
        else:
            self.channel.send_method(_BASIC_NACK, "Lbb", (run[-1].delivery_tag, True, False))
        self.moved += len(run)
        if self.told is not None:
            self.told([_ref(raw, ("", raw.delivery_info["routing_key"])) for raw in run])

    def _settle(self, sent: list[_Sent]) -> None:
        """Wait for the broker to confirm *sent*, then ack the source of every copy it
        took. The routes of the copies it returned or refused go to ``failed``; their
        sources stay unacked (held)."""
        if not sent:
            return
        confirms, channel = self.confirms, self.channel
        deadline = time.monotonic() + self.owner.confirm_timeout
        while confirms.pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"RabbitMQ did not confirm {len(confirms.pending)} released "
                    f"message(s) within {self.owner.confirm_timeout}s"
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
        if not bad and not self.failed:
            channel.basic_ack(sent[-1][1].delivery_tag, multiple=True)
        else:
            for seq, raw, _ in sent:
                if seq not in bad:
                    channel.basic_ack(raw.delivery_tag)
        self.moved += len(sent) - len(bad)
        self.failed.extend(route for seq, _, route in sent if seq in bad)
        if self.told is not None:
            self.told([_ref(raw, route) for seq, raw, route in sent if seq not in bad])
