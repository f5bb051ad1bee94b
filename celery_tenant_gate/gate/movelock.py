"""The move lock: one process at a time moves a tenant's held tasks (release, purge,
resume), on a short lease that its holder renews."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack

from celery_tenant_gate.io.store.lease import renewed
from celery_tenant_gate.io.store.state_store import StateStore


class MoveBusy(TimeoutError):
    """Another process is moving the tenant's held tasks (and renews its lease)."""


class MoveLock:
    """One mover at a time per tenant queue, cluster-wide; a context manager.

    The lock lives *lease* seconds and a thread renews it every third of that while
    the block runs (a release of millions of tasks takes longer): a holder that dies
    (``kill -9``) leaves it for at most *lease* seconds. Entering waits at most *wait*
    seconds for it (0: one try), then raises :class:`MoveBusy`.
    """

    def __init__(
        self,
        store: StateStore,
        context_id: str,
        *,
        lease: float,
        wait: float,
        clock: Callable[[], float] = time.monotonic,
        pause: Callable[[float], None] = time.sleep,
    ) -> None:
        self.store = store
        self.key = f"_move.{context_id}"
        self.lease = lease
        self.wait = wait
        self.token: str | None = None
        self._clock = clock
        self._pause = pause
        self._kept = ExitStack()

    def __enter__(self) -> None:
        deadline = self._clock() + self.wait
        while True:
            self.token = self.store.try_lock(self.key, self.lease)
            if self.token is not None:
                break
            if self._clock() >= deadline:
                raise MoveBusy(f"another process is moving {self.key}")
            self._pause(0.01)  # a mover holds it for milliseconds, or dies: its lease
        self._kept.enter_context(renewed(self.store, self.key, self.token, self.lease))

    def __exit__(self, *exc: object) -> None:
        self._kept.close()
        if self.token is not None:
            self.store.unlock(self.key, self.token)
            self.token = None
