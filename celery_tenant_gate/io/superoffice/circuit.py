"""A circuit breaker, so that a dead State API does not cost every task a timeout."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class CircuitBreaker:
    """Opens after *threshold* consecutive failures; after *reset_timeout* seconds it
    lets one trial call through (half-open): success closes it, failure re-opens it.

    One breaker per process: each process finds out on its own that the API is back.
    A *threshold* of 0 disables the breaker.
    """

    def __init__(
        self,
        threshold: int,
        reset_timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.reset_timeout = reset_timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_running = False

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    def allow(self) -> bool:
        """May a call go through now? A True in half-open state reserves the trial."""
        with self._lock:
            if self._opened_at is None:
                return True
            if self._trial_running or self._clock() - self._opened_at < self.reset_timeout:
                return False
            self._trial_running = True
            return True

    def retry_in(self) -> float:
        """Seconds until the breaker lets a trial call through (0 when closed)."""
        with self._lock:
            if self._opened_at is None:
                return 0.0
            return max(0.0, self.reset_timeout - (self._clock() - self._opened_at))

    def record_success(self) -> None:
        with self._lock:
            self._failures = 0
            self._opened_at = None
            self._trial_running = False

    def after_fork(self) -> None:
        """In a forked child: a new lock (the parent's may have been held by a thread
        that does not exist here), and no trial call (the parent's never ends here)."""
        self._lock = threading.Lock()
        self._trial_running = False

    def record_failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self._trial_running or (self.threshold and self._failures >= self.threshold):
                self._opened_at = self._clock()
            self._trial_running = False
