"""Tasks the gate could not screen wait in the worker: backoff, prefetch, bounds."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from celery_tenant_gate.worker.parking import Parking, backoff


class Timer:
    """The consumer's timer, run by hand: entries are called when the test says."""

    def __init__(self) -> None:
        self.entries: list[tuple[float, Any, tuple[Any, ...]]] = []

    def call_after(self, seconds: float, fun: Any, args: tuple[Any, ...] = ()) -> None:
        self.entries.append((seconds, fun, args))

    def run_next(self) -> float:
        seconds, fun, args = self.entries.pop(0)
        fun(*args)
        return seconds


class QoS:
    def __init__(self, value: int) -> None:
        self.value = value

    def increment_eventually(self) -> None:
        self.value += 1

    def decrement_eventually(self) -> None:
        self.value -= 1


def _request(n: int) -> Any:
    return SimpleNamespace(id=f"task-{n}")


def test_backoff_doubles_from_a_quarter_second_up_to_two() -> None:
    assert [backoff(n) for n in range(1, 7)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]


def test_a_parked_task_is_screened_again_backing_off_and_widens_the_prefetch_meanwhile() -> None:
    timer, qos = Timer(), QoS(8)
    store_up_after = 4  # attempts
    ran: list[str] = []
    given_back: list[str] = []

    def screen_again(request: Any, attempt: int) -> None:
        if attempt <= store_up_after:
            parking.park(request, attempt, ConnectionError("store down"))
        else:
            ran.append(request.id)

    parking = Parking(screen_again, lambda r: given_back.append(r.id), timer, lambda: qos)
    parking.park(_request(1), 1, ConnectionError("store down"))
    assert parking.parked == 1 and qos.value == 9  # the window stays open for others

    waits = []
    while timer.entries:
        waits.append(timer.run_next())
    assert waits == [0.25, 0.5, 1.0, 2.0]
    assert ran == ["task-1"] and given_back == []
    assert parking.parked == 0 and qos.value == 8


def test_the_prefetch_given_back_is_the_one_that_was_widened() -> None:
    timer, before, after = Timer(), QoS(8), QoS(8)
    current = [before]
    parking = Parking(lambda r, a: None, lambda r: None, timer, lambda: current[0])
    parking.park(_request(1), 1, ConnectionError())
    current[0] = after  # the consumer reconnected: a new prefetch count
    timer.run_next()
    assert (before.value, after.value) == (8, 8)


@pytest.mark.parametrize(("attempt", "parked"), [(61, 0), (1, 3)])
def test_beyond_its_bounds_a_task_goes_back_to_the_broker(attempt: int, parked: int) -> None:
    timer = Timer()
    given_back: list[str] = []
    parking = Parking(
        lambda r, a: None, lambda r: given_back.append(r.id), timer, lambda: None, max_parked=3
    )
    for n in range(parked):
        parking.park(_request(n), 1, ConnectionError())
    parking.park(_request(99), attempt, ConnectionError())
    assert parking.parked == parked and parking.given_back == 1
    seconds, fun, args = timer.entries[-1]
    assert seconds == 2.0  # not at once: no hot loop through the broker either
    fun(*args)
    assert given_back == ["task-99"]


def test_a_failure_while_screening_again_gives_the_task_back_rather_than_losing_it() -> None:
    timer = Timer()
    given_back: list[str] = []

    def broken(request: Any, attempt: int) -> None:
        raise RuntimeError("bug")

    parking = Parking(broken, lambda r: given_back.append(r.id), timer, lambda: None)
    parking.park(_request(1), 1, ConnectionError())
    timer.run_next()
    assert given_back == ["task-1"] and parking.parked == 0
