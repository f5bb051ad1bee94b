"""Publishing raw AMQP messages to RabbitMQ with publisher confirms, a batch at a time:
how a release moves the held messages the broker cannot dead-letter itself."""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import suppress
from typing import Any

from celery_tenant_gate._compat import amqp_on_confirms, amqp_publish

#: A publish: its confirm sequence number, the message it copies, its route.
Sent = tuple[int, Any, tuple[str, str]]


class Confirms:
    """Publishing on one channel in confirm mode: which publishes the broker has yet to
    confirm, and which it refused or returned (unroutable)."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.next_seq = 1
        self.pending: set[int] = set()
        self.failed: set[int] = set()
        self.returned: list[tuple[str, str, Any]] = []
        amqp_on_confirms(
            channel, on_ack=self._on_ack, on_nack=self._on_nack, on_return=self._on_return
        )
        channel.confirm_select()

    def publish(self, message: Any, exchange: str, routing_key: str) -> int:
        """Publish *message* (a py-amqp ``Message``), mandatory: a message no queue
        takes comes back. Returns its confirm sequence number; does not wait."""
        amqp_publish(self.channel, message, exchange, routing_key, mandatory=True)
        seq = self.next_seq
        self.next_seq += 1
        self.pending.add(seq)
        return seq

    def wait(self, timeout: float) -> None:
        """Read the broker's answers until every publish is confirmed or refused;
        TimeoutError if that takes more than *timeout* seconds."""
        deadline = time.monotonic() + timeout
        while self.pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"RabbitMQ did not confirm {len(self.pending)} released "
                    f"message(s) within {timeout}s"
                )
            with suppress(TimeoutError):
                self.channel.connection.drain_events(timeout=remaining)

    def refused(self, sent: Sequence[Sent]) -> set[int]:
        """Which of *sent* (all answered: see :meth:`wait`) the broker refused or
        returned; forgets those answers."""
        bad = {seq for seq, _, _ in sent if seq in self.failed}
        for exchange, routing_key, returned in self.returned:
            # A return carries no sequence number: find its copy by route and body.
            for seq, raw, route in sent:
                if (
                    seq not in bad
                    and route == (exchange, routing_key)
                    and bytes(raw.body) == bytes(returned.body)
                ):
                    bad.add(seq)
                    break
        self.returned.clear()
        self.failed.clear()
        return bad

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
