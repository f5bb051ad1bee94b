"""Whether the store (the shared Redis) answers, as this process last found it.

The worker's consumer must not pay a Redis time-out (redis-py's retries, about 0.3 s)
for every task while the store is gone. So the first failure marks the store *down*:
from then on the consumer decides without it (see
:meth:`~celery_tenant_gate.gate.lookup.TenantStates.verdict`) and a background thread
pings it, with a bounded backoff, until it answers again. The flag is a plain
attribute: reading it is as cheap as the cache look-up beside it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)


class StoreHealth:
    """Up or down; while down, a daemon thread pings until the store answers.

    *ping* raises while the store cannot be reached; *on_recovered* is called (in the
    pinging thread, or in the caller of :meth:`recovered`) each time the store is back.
    *first_delay* and *max_delay* bound the wait between pings (doubling). *name*
    says which store in the log lines (its address).
    """

    def __init__(
        self,
        ping: Callable[[], object],
        *,
        on_recovered: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
        first_delay: float = 0.1,
        max_delay: float = 1.0,
        name: str = "",
    ) -> None:
        self.name = name
        self._ping = ping
        self._on_recovered = on_recovered
        self._clock = clock
        self._first_delay = first_delay
        self._max_delay = max_delay
        #: True while the store is taken as unreachable. Read on the hot path.
        self.down = False
        #: When it went down (clock time), while :attr:`down`.
        self.down_since = 0.0
        #: How many times it went down (for the metrics).
        self.outages = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._prober: threading.Thread | None = None

    def failed(self, why: object) -> None:
        """An operation on the store failed with *why*: take it as down until a ping
        answers. Returns at once; only the first failure of an outage is logged."""
        with self._lock:
            if self.down:
                return
            self.down = True
            self.down_since = self._clock()
            self.outages += 1
            if self._prober is None or not self._prober.is_alive():
                self._prober = threading.Thread(
                    target=self._probe, name="tenant-gate-store-probe", daemon=True
                )
                self._prober.start()
        logger.warning(
            "tenant-gate: the store %scannot be reached (%s); deciding from what this "
            "process knows until it answers again",
            f"{self.name} " if self.name else "",
            why,
        )

    def recovered(self) -> None:
        """The store answered: up again (a no-op when it was not down)."""
        with self._lock:
            if not self.down:
                return
            self.down = False
            lasted = self._clock() - self.down_since
        logger.warning(
            "tenant-gate: the store %sanswers again (after %.1fs)",
            f"{self.name} " if self.name else "",
            lasted,
        )
        if self._on_recovered is not None:
            try:
                self._on_recovered()
            except Exception:  # a callback's failure must not stop the prober
                logger.exception("tenant-gate: reacting to the store's recovery failed")

    def outage_lasted(self) -> float:
        """Seconds the current outage has lasted (0 while up)."""
        return self._clock() - self.down_since if self.down else 0.0

    def close(self) -> None:
        """Stop pinging (the flag stays as it is)."""
        self._stop.set()

    def after_fork(self) -> None:
        """In a new child process: the parent's thread does not exist here."""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._prober = None
        self.down = False

    def _probe(self) -> None:
        delay = self._first_delay
        while self.down and not self._stop.wait(delay):
            try:
                self._ping()
            except Exception:  # whatever it is, the store does not answer yet
                delay = min(delay * 2, self._max_delay)
                continue
            self.recovered()
