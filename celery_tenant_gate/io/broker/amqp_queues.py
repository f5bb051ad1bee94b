"""RabbitMQ tenant queues: the exchanges a hold and a release go through, how a tenant
queue is declared, and asking the broker about queues and exchanges.

A tenant queue held through :data:`HOLD_EXCHANGE` dead-letters to
:data:`RELEASE_EXCHANGE`: a release rejects its messages and the broker routes each
one, by its routing key, to the queue it was meant for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

from kombu.connection import Connection
from kombu.entity import Exchange, Queue

from celery_tenant_gate._compat import amqp_keep_bytes

#: The exchange that hold copies go through. Each tenant queue is bound to it by its
#: own name. A copy is published with the queue it was meant for as its routing key
#: and the tenant queue in its ``BCC`` header, so it lands in the tenant queue only,
#: keeping its destination as its routing key.
HOLD_EXCHANGE = "tenant_gate.hold"
#: Where tenant queues dead-letter. A release rejects the held messages and the broker
#: routes each one here by its routing key, to the queue it was meant for (the release
#: binds that queue here by its own name). Dead-lettering also routes by the ``BCC``
#: keys: those lead nowhere here, so no copy goes back to the tenant queue.
RELEASE_EXCHANGE = "tenant_gate.release"
#: The argument that makes a tenant queue dead-letter to RELEASE_EXCHANGE.
DEAD_LETTER_ARGUMENTS = {"x-dead-letter-exchange": RELEASE_EXCHANGE}
_HOLD = Exchange(HOLD_EXCHANGE, "direct", durable=True)  # type: ignore[no-untyped-call]

_NOT_FOUND = 404
_PRECONDITION_FAILED = 406


def is_amqp(app: Any) -> bool:
    """Whether *app*'s broker is RabbitMQ (kombu's py-amqp transport). Connects to
    nothing."""
    return bool(app.connection_for_write().transport.driver_type == "amqp")


def dead_lettering_queue(name: str) -> Queue:
    """A tenant queue on RabbitMQ: durable, consumed by nobody, bound to
    :data:`HOLD_EXCHANGE` by its name and dead-lettering to :data:`RELEASE_EXCHANGE`."""
    return Queue(  # type: ignore[no-untyped-call]
        name,
        _HOLD,
        routing_key=name,
        durable=True,
        auto_delete=False,
        queue_arguments=dict(DEAD_LETTER_ARGUMENTS),
    )


def destination_queue(app: Any, delivery_info: Any) -> str | None:
    """The queue a message was meant for, when the route the broker delivered it by
    names exactly one: the default exchange, :data:`RELEASE_EXCHANGE` (a released
    message keeps its routing key) or a direct exchange one of the app's queues is
    bound to with that routing key; else None.

    Only the broker's delivery info counts: a ``tenant_gate_route`` header can be set
    by any producer, to anything (a task routed to its own tenant queue would stay held
    for ever, one routed elsewhere would be released there)."""
    info = delivery_info if isinstance(delivery_info, dict) else {}
    exchange, routing_key = info.get("exchange") or "", info.get("routing_key") or ""
    if not isinstance(exchange, str) or not isinstance(routing_key, str) or not routing_key:
        return None
    if exchange in {"", RELEASE_EXCHANGE}:
        return routing_key
    found = [
        queue.name
        for queue in app.amqp.queues.values()
        if queue.exchange is not None
        and queue.exchange.name == exchange
        and queue.exchange.type == "direct"
        and queue.routing_key == routing_key
    ]
    return str(found[0]) if len(found) == 1 else None


@contextmanager
def amqp_connection(factory: Callable[[], Connection]) -> Iterator[Connection]:
    """A connection from *factory*, connected, released afterwards; TypeError if it
    is not to an AMQP broker."""
    with factory() as connection:
        driver = connection.transport.driver_type
        if driver != "amqp":
            raise TypeError(f"AmqpHeldQueues needs an AMQP broker, not {driver!r}")
        connection.ensure_connection(max_retries=3)
        yield connection


def open_channel(connection: Connection) -> Any:
    """A new py-amqp channel that hands bodies over as bytes (to be copied as they are;
    decoding also costs time)."""
    # kombu leaves Connection.channel unannotated.
    opener: Callable[[], Any] = connection.channel
    channel = opener()
    amqp_keep_bytes(channel)
    return channel


def close_channel(channel: Any) -> None:
    """Close *channel*, giving its unacked messages back to their queue, in place."""
    with suppress(Exception):
        channel.close()


def probe(
    connection: Connection,
    ask: Callable[[Any], Any],
    refused: frozenset[int] = frozenset({_NOT_FOUND}),
) -> tuple[bool, Any]:
    """Run *ask* on a channel of its own: (True, its answer), or (False, None) when the
    broker refuses it with one of the *refused* codes (the broker then closes that
    channel; any other error is raised)."""
    channel = open_channel(connection)
    try:
        answer = ask(channel)
    except connection.channel_errors as exc:
        if getattr(exc, "reply_code", None) in refused:
            return False, None
        raise
    close_channel(channel)
    return True, answer


def ready(connection: Connection, queue: str) -> int | None:
    """Messages ready in *queue*, or None if it does not exist (it is not created)."""
    found, answer = probe(connection, lambda ch: ch.queue_declare(queue, passive=True))
    return int(answer[1]) if found else None


def exchange_exists(connection: Connection, exchange: str) -> bool:
    return probe(connection, lambda ch: ch.exchange_declare(exchange, "direct", passive=True))[0]


def bind_for_release(connection: Connection, queue: str) -> bool:
    """Bind *queue* to the release exchange by its own name, so that released messages
    reach it; False if it does not exist (dead-lettering to it would drop them)."""

    def bind(channel: Any) -> None:
        channel.exchange_declare(RELEASE_EXCHANGE, "direct", durable=True, auto_delete=False)
        channel.queue_bind(queue, RELEASE_EXCHANGE, routing_key=queue)

    return probe(connection, bind)[0]


def dead_letters(connection: Connection, queue: str) -> bool:
    """Whether *queue* dead-letters to the release exchange, as a hold through the hold
    exchange declares it (a re-declare with other arguments is refused)."""
    return probe(
        connection,
        lambda ch: ch.queue_declare(
            queue, durable=True, auto_delete=False, arguments=dict(DEAD_LETTER_ARGUMENTS)
        ),
        refused=frozenset({_PRECONDITION_FAILED, _NOT_FOUND}),
    )[0]
