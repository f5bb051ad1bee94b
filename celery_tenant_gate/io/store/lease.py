"""A lock kept while a long job runs: renewed by a thread, a third of its life at a time."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from .state_store import StateStore

logger = logging.getLogger(__name__)


@contextmanager
def renewed(store: StateStore, name: str, token: str | None, ttl: float) -> Iterator[None]:
    """Keep the lock *name* of *store* (taken with *token* for *ttl* seconds) for as
    long as the block runs: a thread renews it every ``ttl / 3`` while it is still
    ours. When the process stalls longer than *ttl*, the lock expires as it should.
    Nothing is done without a *token* (the lock was not taken)."""
    if token is None:
        yield
        return
    stop = threading.Event()

    def keep() -> None:
        while not stop.wait(ttl / 3):
            try:
                if not store.renew_lock(name, token, ttl):
                    logger.warning("tenant-gate: lost the lock %s while still working", name)
                    return
            except redis.RedisError:
                logger.warning("tenant-gate: could not renew the lock %s", name, exc_info=True)

    thread = threading.Thread(target=keep, name=f"tenant-gate lock {name}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
