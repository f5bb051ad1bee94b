"""Putting a task message in its tenant queue, with everything preserved.

From the consumer (the usual way) the raw message is re-published as it came:
same body bytes, headers (task id, ETA, expiry, retries...), priority and
properties, plus where it was meant to go. It is acknowledged only after that,
so a crash in between leaves a duplicate, never a loss.

From the pool (a task that was already handed to the pool when its tenant paused)
the message is rebuilt from the request, as ``Task.retry`` does, but without
counting a retry.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.entity import Exchange, Queue
from kombu.messaging import Producer

from celery_tenant_gate._compat import forget_declared, signature_from_request
from celery_tenant_gate.model.carrier import (
    HEADER,
    HELD_AT_HEADER,
    HELD_COUNT_HEADER,
    ROUTE_HEADER,
)

from .amqp_queues import HOLD_EXCHANGE, RELEASE_EXCHANGE, dead_lettering_queue

_ANON = Exchange("")  # type: ignore[no-untyped-call]
_RETRY_POLICY = {"max_retries": 3, "interval_start": 0.1, "interval_step": 0.2}


def tenant_queue(name: str, *, dead_letter: bool = False) -> Queue:
    """A tenant queue: durable, consumed by nobody. On the default exchange; with
    *dead_letter* (RabbitMQ), the one of :func:`.amqp_queues.dead_lettering_queue`."""
    if dead_letter:
        return dead_lettering_queue(name)
    return Queue(  # type: ignore[no-untyped-call]
        name, _ANON, routing_key=name, durable=True, auto_delete=False
    )


#: Longest exchange or routing key a route header may name (AMQP's limit for names).
_LONGEST_NAME = 255


def usable_route(value: Any) -> tuple[str, str] | None:
    """*value* (a ``tenant_gate_route`` header read back from a message: untrusted) as
    ``(exchange, routing_key)``, or None unless it is an object of two strings of at
    most 255 characters, without control characters, not both empty."""
    if not isinstance(value, dict):
        return None
    exchange, routing_key = value.get("exchange"), value.get("routing_key")
    if not isinstance(exchange, str) or not isinstance(routing_key, str):
        return None
    if not (exchange or routing_key) or max(len(exchange), len(routing_key)) > _LONGEST_NAME:
        return None
    if any(ord(char) < 32 or ord(char) == 127 for char in exchange + routing_key):
        return None
    return exchange, routing_key


def held_headers(
    headers: dict[str, Any] | None, delivery_info: dict[str, Any] | None, queue: str = ""
) -> dict[str, Any]:
    """The headers of a message as it goes into the tenant queue *queue*.

    Its route (where a release sends it back) is where the broker delivered it from, not
    a ``tenant_gate_route`` header a producer may have set. A message that came back
    from a tenant queue keeps the route its first hold recorded: on Redis a release
    moves it as stored, so its delivery info still names *queue*; on RabbitMQ it comes
    through :data:`RELEASE_EXCHANGE`.
    """
    result = dict(headers or {})
    info = delivery_info or {}
    exchange, routing_key = info.get("exchange") or "", info.get("routing_key") or ""
    came_back = exchange == RELEASE_EXCHANGE or (not exchange and routing_key == queue)
    if not (came_back and ROUTE_HEADER in result):
        if exchange or routing_key:
            result[ROUTE_HEADER] = {"exchange": exchange, "routing_key": routing_key}
        else:  # the broker did not say: released to the default queue
            result.pop(ROUTE_HEADER, None)
    result[HELD_COUNT_HEADER] = int(result.get(HELD_COUNT_HEADER) or 0) + 1
    result.setdefault(HELD_AT_HEADER, time.time())  # the first hold: the task waits since
    return result


def restore_route(headers: dict[str, Any] | None, delivery_info: dict[str, Any]) -> None:
    """Give a released message back the route it was published with (for ``retry()``:
    on Redis the broker still says it came from the tenant queue). Only a message that
    was held, and only a usable route (see :func:`usable_route`)."""
    if not (headers or {}).get(HELD_COUNT_HEADER):
        return
    route = usable_route((headers or {}).get(ROUTE_HEADER))
    if route is not None:
        delivery_info["exchange"], delivery_info["routing_key"] = route


class ConfirmedProducers:
    """Producers on their own broker connection with publisher confirms (RabbitMQ):
    a hold's copy is confirmed by the broker before the original is acknowledged.

    One connection per process (re-made after a fork), shared under a lock: holds
    are rare next to runs, and the consumer and the ETA timer may hold at once.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self._lock = threading.Lock()
        self._producer: Any = None
        self._pid = 0

    @contextmanager
    def acquire(self) -> Iterator[Any]:
        with self._lock:
            if self._producer is None or self._pid != os.getpid():
                connection = self.app.connection_for_write(
                    transport_options={"confirm_publish": True}
                )
                self._producer = Producer(connection)  # type: ignore[no-untyped-call]
                self._pid = os.getpid()
            yield self._producer


@contextmanager
def _redeclare_on_failure(producer: Any) -> Iterator[None]:
    """After a failed publish, forget what this connection declared: the next hold
    declares its tenant queue again (it may have been deleted meanwhile)."""
    try:
        yield
    except Exception:
        forget_declared(producer.connection)
        raise


def hold_message(
    app: Any,
    message: Any,
    queue: str,
    *,
    producers: Any = None,
    amqp: bool = False,
    destination: str | None = None,
) -> None:
    """Re-publish a received kombu message to the tenant queue *queue* (with
    *producers*, a :class:`ConfirmedProducers`, when given; else the app's pool).

    On RabbitMQ (*amqp*) the tenant queue is always declared to dead-letter; with
    *destination* (the queue the message was meant for) the copy goes through
    :data:`HOLD_EXCHANGE`, so that a release can dead-letter it back there.
    """
    props = message.properties or {}
    headers = held_headers(message.headers, message.delivery_info, queue)
    route: dict[str, Any] = {"exchange": "", "routing_key": queue}
    if amqp and destination is not None:
        route = {"exchange": HOLD_EXCHANGE, "routing_key": destination}
        headers["BCC"] = [queue]
    if producers is not None:
        acquire = producers.acquire()
    else:
        acquire = app.producer_pool.acquire(block=True, timeout=10)
    with acquire as producer, _redeclare_on_failure(producer):
        producer.publish(
            message.body,
            **route,
            # RabbitMQ: a copy that no queue takes (its tenant queue was deleted) is
            # returned, which fails the publish: the original stays unacknowledged.
            mandatory=amqp,
            declare=[tenant_queue(queue, dead_letter=amqp)],
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            headers=headers,
            priority=props.get("priority"),
            correlation_id=props.get("correlation_id"),
            reply_to=props.get("reply_to"),
            delivery_mode=props.get("delivery_mode") or 2,
            retry=True,
            retry_policy=_RETRY_POLICY,
        )


def hold_request(
    task: Any,
    queue: str,
    context_id: str,
    *,
    producers: Any = None,
    amqp: bool = False,
    destination: str | None = None,
) -> None:
    """Re-publish the task now running in this pool process to *queue*, as
    :func:`hold_message` does (confirmed by the broker with *producers*)."""
    request = task.request
    headers = held_headers(request.headers, request.delivery_info, queue)
    headers[HEADER] = context_id
    entity = tenant_queue(queue, dead_letter=amqp)
    through_hold = amqp and destination is not None
    if through_hold:
        headers["BCC"] = [queue]
    signature = signature_from_request(
        task,
        request,
        # A Queue, not a name: Celery then declares it as it is. Without an exchange
        # given, Celery publishes to a direct queue through the default exchange.
        queue=entity,
        eta=request.eta,
        headers=headers,
    )
    if through_hold:
        signature.set(exchange=HOLD_EXCHANGE, routing_key=destination)
    # RabbitMQ: a copy no queue takes (its tenant queue was deleted under this
    # process) is returned, which fails the publish; the tenant queue is then
    # declared again and the copy sent once more. The task is already out of the
    # broker's hands here (with acks_late off): a failure would lose it.
    attempts = 2 if amqp else 1
    for attempt in range(1, attempts + 1):
        acquire = producers.acquire() if producers is not None else task.app.producer_or_acquire()
        with acquire as producer:
            try:
                with _redeclare_on_failure(producer):
                    producer.maybe_declare(entity)
                    # The request's options already carry the task id, retries
                    # (unchanged), expiry, priority, links and chord: a hold is not a retry.
                    signature.apply_async(
                        producer=producer, retry=True, retry_policy=_RETRY_POLICY, mandatory=amqp
                    )
                return
            except producer.connection.channel_errors:
                if attempt == attempts:
                    raise
