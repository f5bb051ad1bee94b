"""The in-process cache of verdicts, and the listener that empties it the moment the
shared state changes.

redis-py's client-side caching would do this, but it refuses servers older than
Redis 7.4; pub/sub works on every Redis. While the listener is not subscribed
(starting, or reconnecting after a lost connection, during which changes may have
been missed) the cache stores nothing new, so every look-up reads Redis; what it
held is forgotten, unless the store itself cannot be reached: then it is kept, for a
bounded time (:meth:`LocalCache.suspend`), since no change can be made meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

import redis

logger = logging.getLogger(__name__)

V = TypeVar("V")


class LocalCache(Generic[V]):
    """Values per tenant, each with an expiry time (Unix seconds, as the records keep).

    Reads take no lock. A value read from Redis is only stored if no change for its
    tenant was announced since the read began (see :meth:`token`), so that a late
    ``put`` cannot bring back a value that a change made stale.
    """

    def __init__(self, max_size: int = 100_000) -> None:
        self.max_size = max_size
        #: ctx -> (expires at, value). Public for the hot path.
        self.entries: dict[str, tuple[float, V]] = {}
        self._generations: dict[str, int] = {}
        self._epoch = 0
        self.enabled = False
        self.changed = threading.Condition()

    def token(self, context_id: str) -> tuple[int, int]:
        """Take before reading the shared state; give to :meth:`put` after."""
        return self._epoch, self._generations.get(context_id, 0)

    def put(self, context_id: str, token: tuple[int, int], expires: float, value: V) -> bool:
        # Checked and stored under the lock invalidate() takes: else a change announced
        # between the check and the store would be lost until the entry expires.
        with self.changed:
            if not self.enabled or token != self.token(context_id):
                return False
            self._store(context_id, expires, value)
            return True

    def _store(self, context_id: str, expires: float, value: V) -> None:
        entries = self.entries
        if len(entries) >= self.max_size and context_id not in entries:
            # Oldest first: dicts keep insertion order.
            for key in list(entries)[: max(1, self.max_size // 10)]:
                entries.pop(key, None)
        entries[context_id] = (expires, value)

    def invalidate(self, context_id: str) -> None:
        with self.changed:
            self._generations[context_id] = self._generations.get(context_id, 0) + 1
            self.entries.pop(context_id, None)
            self.changed.notify_all()

    def reset(self, *, enabled: bool) -> None:
        """Forget everything (changes may have been missed); enable or disable storing."""
        with self.changed:
            self._epoch += 1
            self.enabled = enabled
            self.entries.clear()
            self._generations.clear()
            self.changed.notify_all()

    def suspend(self, until: float) -> None:
        """Keep serving what is cached, until *until* at the latest, but store nothing
        new: the store cannot be read, so no change can be announced, and what this
        process knows is all there is (:meth:`reset` ends it)."""
        with self.changed:
            self._epoch += 1
            self.enabled = False
            self._generations.clear()
            for context_id, (expires, value) in list(self.entries.items()):
                if expires > until:
                    self.entries[context_id] = (until, value)
            self.changed.notify_all()

    def wait_for_change(self, timeout: float) -> None:
        """Block until any tenant changes, or *timeout* seconds."""
        with self.changed:
            self.changed.wait(timeout)


class ChangeListener:
    """A daemon thread subscribed to the store's change channel."""

    def __init__(
        self,
        client: redis.Redis,
        channel: str,
        on_change: Callable[[str], None],
        on_connection: Callable[[bool], None],
        *,
        reconnect_delay: float = 0.5,
        reconnect_delay_max: float = 10.0,
    ) -> None:
        # Typed through a variable: redis-py typed pubsub() only in 8.x (untyped before).
        self._open_pubsub: Callable[[], redis.client.PubSub] = client.pubsub
        self._channel = channel
        self._on_change = on_change
        self._on_connection = on_connection
        self._delay = reconnect_delay
        self._delay_max = reconnect_delay_max
        self._stop = threading.Event()
        self.subscribed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tenant-gate-changes", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        delay = self._delay
        while not self._stop.is_set():
            pubsub = self._open_pubsub()
            try:
                pubsub.subscribe(self._channel)
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.2)
                    if message is None:
                        continue
                    kind = message["type"]
                    if kind == "subscribe":
                        self._on_connection(True)
                        self.subscribed.set()
                        delay = self._delay
                    elif kind == "message":
                        data = message["data"]
                        self._on_change(data.decode() if isinstance(data, bytes) else data)
            except (redis.RedisError, OSError) as exc:
                if self.subscribed.is_set() or delay == self._delay:
                    logger.warning(
                        "tenant-gate: lost the change channel %s (%s); reconnecting",
                        self._channel,
                        exc,
                    )
            except Exception:  # never let the thread die: caching would stay off
                logger.exception("tenant-gate: change listener failed; restarting it")
            finally:
                self.subscribed.clear()
                if not self._stop.is_set():  # stopped: nobody is to be told
                    self._on_connection(False)
                with contextlib.suppress(Exception):  # the connection is already broken
                    pubsub.close()
            self._stop.wait(delay)
            delay = min(delay * 2, self._delay_max)
