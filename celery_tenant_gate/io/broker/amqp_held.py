"""Held messages in tenant queues on a RabbitMQ broker (kombu's py-amqp transport): the
:class:`~celery_tenant_gate.model.held.HeldQueues` of a RabbitMQ broker.

A tenant queue (``tenant.<id>``) is a durable classic queue that no worker consumes.
Every call opens its own connection from the factory, and its own channels, and
releases them before returning. How a release moves the messages, and why none is
lost: :mod:`.amqp_release`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from kombu.connection import Connection

from celery_tenant_gate.model.held import HeldMessage, OnMoved

from .amqp_consume import Consumer, held_from_amqp
from .amqp_queues import amqp_connection, close_channel, dead_letters, open_channel, ready
from .amqp_release import RELEASED_HEADER, HeldReleaseError, Release, route_of

__all__ = ["RELEASED_HEADER", "AmqpHeldQueues", "HeldMessage", "HeldReleaseError"]


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

    def count(self, queue: str) -> int:
        """Messages waiting in *queue*; 0 if it does not exist (it is not created).

        Messages another client has received but not acknowledged are not counted.
        """
        with amqp_connection(self.connection_factory) as connection:
            return ready(connection, queue) or 0

    def counts(self, queues: Sequence[str]) -> dict[str, int]:
        """Messages waiting in each of *queues*, over one connection (missing: 0)."""
        with amqp_connection(self.connection_factory) as connection:
            return {queue: ready(connection, queue) or 0 for queue in queues}

    def peek(self, queue: str, limit: int = 100) -> list[HeldMessage]:
        """The oldest *limit* messages of *queue*, oldest first.

        They are received unacknowledged and given back, so afterwards the queue
        holds the same messages in the same order (RabbitMQ puts requeued messages
        back in place); they are flagged as redelivered.
        """
        found: list[HeldMessage] = []
        with amqp_connection(self.connection_factory) as connection:
            if not ready(connection, queue):
                return found
            channel = open_channel(connection)
            try:
                while len(found) < limit:
                    raw = channel.basic_get(queue, no_ack=False)
                    if raw is None:
                        break
                    found.append(held_from_amqp(raw))
            finally:
                close_channel(channel)
        return found

    def destination(self, message: HeldMessage) -> tuple[str, str]:
        """The exchange and routing key *message* was meant for."""
        return self._route(message.headers)

    def _route(self, headers: dict[str, Any]) -> tuple[str, str]:
        return route_of(headers, self.default_queue)

    def release(
        self,
        queue: str,
        *,
        marker: str,
        batch: int = 5000,
        on_moved: OnMoved | None = None,
        behind: bool = True,
    ) -> int:
        """Move every message of *queue* to where it was meant to go, oldest first.

        A message held through the hold exchange goes to the queue its routing key
        names: it is rejected, and the broker dead-letters it there. Any other goes
        to the exchange and routing key in its ``tenant_gate_route`` header (the
        default exchange and *default_queue* if it has none), as a copy with the same
        body, content type, encoding, properties and headers, plus the header
        ``tenant_gate_released`` = *marker* (give each release its own). It moves
        until the queue is empty, a message it moved itself comes back (a task held
        again at once, because its tenant still does not run) or twice as many as the queue
        held when it began (and a batch) are moved: what is held meanwhile may wait
        for the next release, so a release always ends. 0 for a queue that does not exist.

        Raises :class:`HeldReleaseError` if a message's route leads to no queue (or
        to a missing exchange). The release stops at the end of that batch: such
        messages stay at the head of the tenant queue, in order (after a missing
        exchange, so does the rest of the batch); the others were moved.

        *on_moved*, if given, is told the tasks of each batch once the broker has them.
        Released messages always go *behind* what is queued.
        """
        if batch < 1:
            raise ValueError(f"batch must be at least 1, not {batch}")
        with amqp_connection(self.connection_factory) as connection:
            waiting = ready(connection, queue)
            if not waiting:
                return 0
            rejecting = self.dead_letter and dead_letters(connection, queue)
            consumer = Consumer(connection, queue, prefetch=2 * batch)
            try:
                run = Release(
                    connection,
                    consumer,
                    marker=marker,
                    rejecting=rejecting,
                    route=self._route,
                    confirm_timeout=self.confirm_timeout,
                    told=on_moved,
                )
                # Bounded, so that it ends while tasks keep being held (the count
                # RabbitMQ gives may lag behind the last confirmed publishes).
                limit = 2 * waiting + batch
                return run.until_done(batch, self.idle_wait, limit=limit)
            finally:
                close_channel(consumer.channel)

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
        with amqp_connection(self.connection_factory) as connection:
            if not ready(connection, queue):
                return 0
            consumer = Consumer(connection, queue, prefetch=2 * batch)
            try:
                for raws in consumer.batches(batch, self.idle_wait):
                    sink([held_from_amqp(raw) for raw in raws])
                    consumer.channel.basic_ack(raws[-1].delivery_tag, multiple=True)
                    total += len(raws)
            finally:
                # A clean close: the broker has the acks before the call returns.
                close_channel(consumer.channel)
        return total
