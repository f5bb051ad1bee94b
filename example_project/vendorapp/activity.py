"""The app's activity log: what ran, for which tenant, when, and which server it called.

A capped Redis stream (``{namespace}:activity``), so that operators (and the demo, and
the tests) can follow the work without a database. Each entry is one JSON field.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import redis

#: Entries kept; older ones are trimmed (approximately, as Redis does it cheaply).
MAX_ENTRIES = 100_000


class ActivityLog:
    def __init__(self, client: redis.Redis, key: str) -> None:
        self.client = client
        self.key = key

    @classmethod
    def from_url(cls, url: str, key: str) -> ActivityLog:
        return cls(redis.Redis.from_url(url), key)

    def record(self, **entry: Any) -> None:
        self.client.xadd(
            self.key, {"entry": json.dumps(entry)}, maxlen=MAX_ENTRIES, approximate=True
        )

    def follow(self, after: str = "0", block: float = 0.0) -> tuple[str, list[dict[str, Any]]]:
        """Entries after the stream id *after* (waiting up to *block* seconds for one);
        returns the id to pass next time, and the entries."""
        reply: Any = self.client.xread(
            {self.key: after}, block=int(block * 1000) if block > 0 else None, count=10_000
        )
        entries = []
        for _stream, items in reply or []:
            for item_id, fields in items:
                after = item_id.decode() if isinstance(item_id, bytes) else item_id
                entries.append(json.loads(fields[b"entry"]))
        return after, entries

    def __iter__(self) -> Iterator[dict[str, Any]]:
        after = "0"
        while True:
            after, entries = self.follow(after)
            if not entries:
                return
            yield from entries
