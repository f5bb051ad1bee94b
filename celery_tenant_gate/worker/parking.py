"""Tasks the gate could not screen (the store unreachable, the broker refusing a hold),
kept in the worker, unacknowledged, and screened again after a bounded backoff.

Sending them back to the broker would loop them through it at full speed (each one
costing every worker a look-up and a round trip) and, on RabbitMQ, fill the
prefetch window with them so that running tenants starve. Parked here, a task
costs nothing but a timer entry, and the prefetch window is widened by one for it
while it waits (as Celery does for a task with an ETA), so other tasks keep coming.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

#: Seconds before the first new attempt, doubled each time up to :data:`MAX_DELAY`.
FIRST_DELAY = 0.25
MAX_DELAY = 2.0
#: Attempts before a parked task goes back to the broker (another worker may do better).
MAX_ATTEMPTS = 60
#: Tasks parked at most at once; beyond, a task goes back to the broker after a delay.
MAX_PARKED = 10_000


def backoff(attempt: int, first: float = FIRST_DELAY, most: float = MAX_DELAY) -> float:
    """Seconds to wait before attempt number *attempt* (1, 2, ...) screens it again."""
    return float(min(most, first * 2 ** max(attempt - 1, 0)))


class Parking:
    """Parks requests, each until its next attempt.

    *screen_again(request, attempt)* screens a request again (and may park it again
    with ``attempt + 1``); *give_back(request)* returns one to the broker; *timer* has
    ``call_after(seconds, fun, args)`` (the consumer's); *qos* gives the consumer's
    prefetch count now (with ``increment_eventually()`` and ``decrement_eventually()``),
    or None (before the consumer has one).
    """

    def __init__(
        self,
        screen_again: Callable[[Any, int], Any],
        give_back: Callable[[Any], None],
        timer: Any,
        qos: Callable[[], Any],
        *,
        max_parked: int = MAX_PARKED,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> None:
        self._screen_again = screen_again
        self._give_back = give_back
        self._timer = timer
        self._qos = qos
        self.max_parked = max_parked
        self.max_attempts = max_attempts
        #: Requests waiting here now.
        self.parked = 0
        #: Requests ever parked, and those given back to the broker (for the metrics).
        self.total = 0
        self.given_back = 0

    def park(self, request: Any, attempt: int, why: BaseException) -> None:
        """Keep *request* and screen it again after :func:`backoff` (*attempt* is
        how many times it failed so far, this one included)."""
        if attempt > self.max_attempts or self.parked >= self.max_parked:
            logger.warning(
                "tenant-gate: task %s could not be screened %d time(s) (%s); back to the broker",
                request.id,
                attempt,
                why,
            )
            self.given_back += 1
            self._timer.call_after(MAX_DELAY, self._give_back, (request,))
            return
        if self.parked == 0:
            logger.warning(
                "tenant-gate: could not screen task %s (%s); keeping it, and any like it, "
                "here until it can be",
                request.id,
                why,
            )
        self.parked += 1
        self.total += 1
        qos = self._qos()  # a new one after a reconnection: the same one gives back
        if qos is not None:
            qos.increment_eventually()
        self._timer.call_after(backoff(attempt), self._unpark, (request, attempt, qos))

    def _unpark(self, request: Any, attempt: int, qos: Any) -> None:
        self.parked -= 1
        if qos is not None:
            qos.decrement_eventually()
        try:
            self._screen_again(request, attempt + 1)
        except Exception:  # on the timer: nothing above it would keep the task
            logger.exception("tenant-gate: screening parked task %s failed", request.id)
            self._give_back(request)
        if self.parked == 0:
            logger.info("tenant-gate: no task waits to be screened any more")
