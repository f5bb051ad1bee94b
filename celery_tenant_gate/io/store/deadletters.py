"""The dead-letter place: tasks that were dropped, kept per tenant in Redis with the reason.

Keys (``{p}`` is the key prefix)::

    {p}:dead:{ctx}     list   newest first, JSON entries, at most ``max_per_tenant``
    {p}:dead_counts    hash   ctx -> how many were dropped in all (never trimmed)

Messages whose tenant is missing or malformed are kept under the tenant ``_invalid``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from celery_tenant_gate.model.held import HeldMessage

INVALID_TENANT = "_invalid"


@dataclass(frozen=True)
class DeadLetter:
    """A dropped task: enough to tell what it was and why, and to replay it by hand."""

    task_id: str
    task_name: str
    reason: str
    at: float
    headers: dict[str, Any] = field(default_factory=dict)
    #: The raw message body, base64, with its content type and encoding.
    body: str = ""
    content_type: str = ""
    content_encoding: str = ""

    @classmethod
    def of(cls, message: HeldMessage, reason: str, at: float) -> DeadLetter:
        """*message* as a dead letter, dropped at *at* for *reason*."""
        return cls.from_raw(
            headers=message.headers,
            body=message.body,
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            reason=reason,
            at=at,
        )

    @classmethod
    def from_raw(
        cls,
        *,
        headers: dict[str, Any],
        body: bytes,
        content_type: str,
        content_encoding: str,
        reason: str,
        at: float,
    ) -> DeadLetter:
        return cls(
            task_id=str(headers.get("id", "")),
            task_name=str(headers.get("task", "")),
            reason=reason,
            at=at,
            headers=headers,
            body=base64.b64encode(body).decode(),
            content_type=content_type,
            content_encoding=content_encoding,
        )


class DeadLetters:
    def __init__(self, client: redis.Redis, prefix: str, max_per_tenant: int = 10_000) -> None:
        self.client = client
        self.prefix = prefix
        self.max_per_tenant = max_per_tenant
        self.counts_key = f"{prefix}:dead_counts"

    def key(self, context_id: str) -> str:
        return f"{self.prefix}:dead:{context_id}"

    def record(self, context_id: str, letters: Iterable[DeadLetter]) -> int:
        """Keep *letters* for the tenant; returns the tenant's new total."""
        encoded = [json.dumps(asdict(letter), default=str) for letter in letters]
        if not encoded:
            return self.count(context_id)
        pipe = self.client.pipeline(transaction=True)
        pipe.lpush(self.key(context_id), *encoded)
        pipe.ltrim(self.key(context_id), 0, self.max_per_tenant - 1)
        pipe.hincrby(self.counts_key, context_id, len(encoded))
        total: int = pipe.execute()[-1]
        return total

    def count(self, context_id: str) -> int:
        value = self.client.hget(self.counts_key, context_id)
        return int(value or 0)

    def counts(self) -> dict[str, int]:
        raw: dict[Any, Any] = self.client.hgetall(self.counts_key)
        return {_text(k): int(v) for k, v in raw.items()}

    def list(self, context_id: str, limit: int = 100) -> list[DeadLetter]:
        """The newest *limit* letters of the tenant."""
        raw: list[Any] = self.client.lrange(self.key(context_id), 0, limit - 1)
        return [DeadLetter(**json.loads(item)) for item in raw]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
