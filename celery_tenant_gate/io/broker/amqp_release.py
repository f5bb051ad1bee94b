"""Releasing a RabbitMQ tenant queue: every held message back to where it was meant to
go, oldest first, none lost.

A message held through the hold exchange is released by the broker itself: it is
rejected, and its tenant queue dead-letters it, by its routing key, to the queue it
was meant for. Nothing is re-published: the client only reads. Other messages
(destination not known at hold time, or dead-lettering off) are moved: the raw AMQP
message is re-published (the body bytes are never decoded; content type, encoding,
headers and properties are copied as they are), and the source is acknowledged only
once the broker has confirmed its copy (publisher confirms, a batch at a time). Either
way a crash of the releasing process can duplicate a message but never lose one.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from typing import Any

from kombu.connection import Connection

from celery_tenant_gate._compat import amqp_nack
from celery_tenant_gate.model.carrier import HELD_COUNT_HEADER, ROUTE_HEADER
from celery_tenant_gate.model.errors import TenantGateError
from celery_tenant_gate.model.held import OnMoved, TaskRef

from .amqp_consume import Consumer
from .amqp_publish import Confirms, Sent
from .amqp_queues import HOLD_EXCHANGE, bind_for_release, exchange_exists
from .holding import usable_route

#: Set on every released message: the marker given to the release.
RELEASED_HEADER = "tenant_gate_released"


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


def route_of(headers: dict[str, Any], default_queue: str) -> tuple[str, str]:
    """The exchange and routing key a held message was meant for: its
    ``tenant_gate_route`` header (the route its first hold recorded) when usable (see
    :func:`.holding.usable_route`: read back, so untrusted), else the default exchange
    and *default_queue*."""
    return usable_route(headers.get(ROUTE_HEADER)) or ("", default_queue)


def _holds(headers: dict[str, Any]) -> int:
    """How many times a message was held (the header each hold counts up)."""
    try:
        return int(headers.get(HELD_COUNT_HEADER) or 0)
    except (TypeError, ValueError):
        return 0


def _ref(raw: Any, route: tuple[str, str]) -> TaskRef:
    headers = (raw.properties or {}).get("application_headers") or {}
    return TaskRef(str(headers.get("id", "")), str(headers.get("task", "")), route[1])


class Release:
    """One release of one tenant queue, batch after batch, in the order received.

    Messages held through the hold exchange are rejected in runs (one ``basic.nack``
    per run) and the broker dead-letters them where they were meant to go; others are
    re-published with confirms. A run is settled before the next one starts, so that
    a ``multiple`` ack or nack never covers a delivery of the other kind.
    """

    def __init__(
        self,
        connection: Connection,
        consumer: Consumer,
        *,
        marker: str,
        rejecting: bool,
        route: Callable[[dict[str, Any]], tuple[str, str]],
        confirm_timeout: float,
        told: OnMoved | None = None,
    ) -> None:
        self.connection = connection
        self.consumer = consumer
        self.channel = consumer.channel
        self.queue = consumer.queue
        self.marker = marker
        self.rejecting = rejecting
        self.route = route
        self.confirm_timeout = confirm_timeout
        self.told = told
        self.confirms = Confirms(self.channel)
        self.known_exchanges = {""}
        self.known_queues: dict[str, bool] = {}
        # Task ids this release dead-lettered, with how many times each was held.
        self.moved_ids: dict[str, int] = {}
        self.moved = 0
        # Routes of copies the broker returned or refused; their sources stay held.
        self.failed: list[tuple[str, str]] = []

    def until_done(self, batch: int, idle_wait: float, limit: int | None = None) -> int:
        """Release batch after batch, at most *limit* messages; how many were moved."""
        left = limit
        for taken in self.consumer.batches(batch, idle_wait):
            raws = taken if left is None else taken[:left]
            if left is not None:
                left -= len(raws)
            if self._batch(raws) or left == 0:
                # Deliveries not settled go back to the tenant queue, in place, when
                # the channel closes.
                self.consumer.stop()
                break
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
        sent: list[Sent] = []
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
            exchange, routing_key = self.route(headers)
            if exchange not in self.known_exchanges:
                # Publishing to a missing exchange would close the channel.
                if not exchange_exists(self.connection, exchange):
                    unroutable.append((exchange, routing_key))
                    break
                self.known_exchanges.add(exchange)
            headers[RELEASED_HEADER] = self.marker
            properties["application_headers"] = headers
            copy = type(raw)(raw.body, **properties)
            seq = self.confirms.publish(copy, exchange, routing_key)
            sent.append((seq, raw, (exchange, routing_key)))
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
            self.known_queues[destination] = bool(destination) and bind_for_release(
                self.connection, destination
            )
        return self.known_queues[destination]

    def _reject(self, run: list[Any]) -> None:
        if not run:
            return
        if self.failed:
            # A delivery before these stays unsettled (to stay held): no "multiple".
            for raw in run:
                amqp_nack(self.channel, raw.delivery_tag, multiple=False)
        else:
            amqp_nack(self.channel, run[-1].delivery_tag, multiple=True)
        self.moved += len(run)
        if self.told is not None:
            self.told([_ref(raw, ("", raw.delivery_info["routing_key"])) for raw in run])

    def _settle(self, sent: list[Sent]) -> None:
        """Wait for the broker to confirm *sent*, then ack the source of every copy it
        took. The routes of the copies it returned or refused go to ``failed``; their
        sources stay unacked (held)."""
        if not sent:
            return
        self.confirms.wait(self.confirm_timeout)
        bad = self.confirms.refused(sent)
        channel = self.channel
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
