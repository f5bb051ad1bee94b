"""A circuit breaker, so that a dead State API does not cost every task a timeout."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class CircuitBreaker:
    """Opens after *threshold* consecutive failures; after *reset_timeout* seconds it
    lets one trial call through (half-open): success closes it, failure re-opens it.

    Besides, :meth:`hold` refuses every call until a moment the server named
    (``Retry-After``), whatever the count: that is the API's word about itself, so it
    holds for every tenant, and also with a *threshold* of 0, which only disables
    opening on a count.

    One breaker per process: each process finds out on its own that the API is back.
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
        self._held_until: float | None = None

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    def allow(self) -> bool:
        """May a call go through now? A True in half-open state reserves the trial."""
        with self._lock:
            now = self._clock()
            if self._held_until is not None and now < self._held_until:
                return False
            if self._opened_at is None:
                return True
            if self._trial_running or now - self._opened_at < self.reset_timeout:
                return False
            self._trial_running = True
            return True

    def retry_in(self) -> float:
        """Seconds until the breaker lets a call through (0 when closed and not held)."""
        with self._lock:
            now = self._clock()
            opened = 0.0
            if self._opened_at is not None:
                opened = self.reset_timeout - (now - self._opened_at)
            return max(0.0, opened, self._held_for(now))

    def held_for(self) -> float:
        """Seconds left of a :meth:`hold` (0 when there is none)."""
        with self._lock:
            return self._held_for(self._clock())

    def hold(self, seconds: float) -> None:
        """Refuse every call for *seconds* from now (a longer hold already set stays)."""
        with self._lock:
            until = self._clock() + seconds
            if self._held_until is None or until > self._held_until:
                self._held_until = until

    def record_success(self) -> None:
        # A hold is not lifted: a call that began before the server asked to wait
        # may well end after it did.
        with self._lock:
            self._failures = 0
            self._opened_at = None
            self._trial_running = False

    def record_failure(self) -> bool:
        """Count a failed call. True when this failure opened the circuit."""
        with self._lock:
            self._failures += 1
            was_open = self._opened_at is not None
            if self._trial_running or (self.threshold and self._failures >= self.threshold):
                self._opened_at = self._clock()
            self._trial_running = False
            return not was_open and self._opened_at is not None

    def after_fork(self) -> None:
        """In a forked child: a new lock (the parent's may have been held by a thread
        that does not exist here), and no trial call (the parent's never ends here)."""
        self._lock = threading.Lock()
        self._trial_running = False

    def _held_for(self, now: float) -> float:
        return 0.0 if self._held_until is None else max(0.0, self._held_until - now)
