"""The sweeper: a daemon thread in every worker; every ``tenant_gate_sweep_interval`` one
worker of the cluster (whoever takes the sweep lock) runs :meth:`Gate.sweep`, which ends
pauses that end by themselves (see :mod:`celery_tenant_gate.gate.sweep`)."""

from __future__ import annotations

import contextlib
import logging
import threading

from celery_tenant_gate.gate.gate import Gate
from celery_tenant_gate.io.store.lease import renewed

logger = logging.getLogger(__name__)


class Sweeper:
    """A daemon thread; every ``tenant_gate_sweep_interval`` one worker of the cluster
    (whoever takes the sweep lock) runs :meth:`Gate.sweep`."""

    def __init__(self, gate: Gate, interval: float) -> None:
        self.gate = gate
        self.interval = interval
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tenant-gate-sweeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self, *_: object) -> None:
        """Sweep now rather than at the end of the interval (a tenant runs again)."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _run(self) -> None:
        store = self.gate.states.store
        with contextlib.suppress(Exception):  # the mirror from the start (else: next tick)
            self.gate.store_guard.tick()
        # A short lease, renewed while the sweep runs: a sweeper that dies (kill -9)
        # blocks the others' sweeps for at most that long.
        lease = self.gate.config.lock_lease
        wait = self.interval
        while True:
            self._wake.wait(wait)
            self._wake.clear()
            if self._stop.is_set():
                return
            wait = self.interval
            if self.gate.states.health.down:
                continue  # nothing can be swept; the look-ups say when it is back
            try:
                # In every worker, swept or not: notice a store that lost its data, and
                # keep the mirror of the paused and held tenants to write back then.
                self.gate.store_guard.tick()
                token = store.try_lock("_sweep", lease)
                if token is None:
                    # Its holder may have died: try again when its lease may be over.
                    wait = min(self.interval, lease / 2)
                    continue
                try:
                    with renewed(store, "_sweep", token, lease):
                        for ctx, what in self.gate.sweep().items():
                            logger.info("tenant-gate: sweep: %s %s", ctx, what)
                finally:
                    store.unlock("_sweep", token)
            except Exception:
                logger.exception("tenant-gate: sweep failed; trying again later")
