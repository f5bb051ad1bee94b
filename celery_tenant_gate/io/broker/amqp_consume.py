"""Reading a RabbitMQ tenant queue: a consumer that buffers deliveries oldest first,
and a received message as a :class:`HeldMessage`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from kombu.connection import Connection

from celery_tenant_gate.model.held import HeldMessage

from .amqp_queues import open_channel, ready

# AMQP properties that HeldMessage keeps in fields of their own.
_OWN_FIELDS = ("application_headers", "content_type", "content_encoding")
_MAX_PREFETCH = 65535


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


class Consumer:
    """A channel of its own consuming one queue into a buffer, oldest first, nothing
    acknowledged (closing the channel gives the unacknowledged back, in place)."""

    def __init__(self, connection: Connection, queue: str, prefetch: int) -> None:
        self.connection = connection
        self.queue = queue
        self.channel: Any = open_channel(connection)
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

    def batches(self, size: int, wait: float) -> Iterator[list[Any]]:
        """Deliveries by batches of up to *size*, oldest first, until the queue is empty
        (or deleted); a batch is taken once *size* came or none came for *wait* seconds."""
        while True:
            self.fill(size, wait)
            if not self.buffer:
                if self.cancelled or not ready(self.connection, self.queue):
                    self.stop()
                    if not self.buffer:
                        return
                continue
            yield self.take(size)

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
