"""The move lock: one process at a time moves a tenant's held tasks (release, purge)."""

from __future__ import annotations

import time

from celery_tenant_gate.io.store.state_store import StateStore


class MoveLock:
    """One mover at a time per tenant queue, cluster-wide; a context manager.

    Raises :class:`TimeoutError` on entry when another process keeps it longer than
    *timeout* seconds (which is also how long the lock lives if its holder dies).
    """

    def __init__(self, store: StateStore, context_id: str, timeout: float) -> None:
        self.store = store
        self.key = f"_move.{context_id}"
        self.timeout = timeout
        self.token: str | None = None

    def __enter__(self) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            self.token = self.store.try_lock(self.key, self.timeout)
            if self.token is not None:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"another process is moving {self.key} for too long")
            time.sleep(0.01)  # a mover holds it for milliseconds

    def __exit__(self, *exc: object) -> None:
        if self.token is not None:
            self.store.unlock(self.key, self.token)
