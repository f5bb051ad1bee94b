from typing import Any

from celery_tenant_gate.io.superoffice.circuit import CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_threshold_consecutive_failures() -> None:
    breaker = CircuitBreaker(3, 30.0, clock=Clock())
    for _ in range(2):
        breaker.record_failure()
    assert breaker.allow()
    breaker.record_success()  # a success resets the count
    for _ in range(2):
        breaker.record_failure()
    assert breaker.allow()
    breaker.record_failure()
    assert not breaker.allow()
    assert breaker.retry_in() == 30.0


def test_one_trial_after_the_reset_timeout() -> None:
    clock = Clock()
    breaker = CircuitBreaker(1, 30.0, clock=clock)
    breaker.record_failure()
    clock.now = 29.9
    assert not breaker.allow()
    clock.now = 30.0
    assert breaker.allow()  # the trial
    assert not breaker.allow()  # only one at a time
    breaker.record_failure()  # the trial failed: open again, for another full timeout
    clock.now = 59.0
    assert not breaker.allow()
    clock.now = 60.0
    assert breaker.allow()
    breaker.record_success()
    assert breaker.allow() and breaker.allow()
    assert not breaker.is_open


def test_threshold_zero_never_opens() -> None:
    breaker = CircuitBreaker(0, 30.0, clock=Clock())
    for _ in range(100):
        breaker.record_failure()
    assert breaker.allow()


def test_it_says_once_that_a_failure_opened_it() -> None:
    breaker = CircuitBreaker(2, 30.0, clock=Clock())
    assert [breaker.record_failure() for _ in range(4)] == [False, True, False, False]


def test_a_hold_refuses_every_call_until_its_moment_even_with_threshold_zero() -> None:
    clock = Clock()
    breaker = CircuitBreaker(0, 30.0, clock=clock)
    breaker.hold(12.0)
    assert not breaker.is_open  # a hold is no count of failures
    assert not breaker.allow()
    assert breaker.retry_in() == 12.0 == breaker.held_for()
    breaker.hold(5.0)  # a shorter hold does not shorten the longer one
    breaker.record_success()  # nor does a call that began before the hold
    clock.now = 11.9
    assert not breaker.allow()
    clock.now = 12.0
    assert breaker.allow() and breaker.allow()
    assert breaker.retry_in() == 0.0 == breaker.held_for()


def test_a_hold_delays_the_trial_of_an_open_circuit() -> None:
    clock = Clock()
    breaker = CircuitBreaker(1, 30.0, clock=clock)
    breaker.record_failure()
    breaker.hold(45.0)
    assert breaker.retry_in() == 45.0
    clock.now = 44.0  # the reset timeout has passed, the hold has not
    assert not breaker.allow()
    clock.now = 45.0
    assert breaker.allow()  # the one trial
    assert not breaker.allow()


def test_a_forked_child_is_not_stuck_behind_the_parents_trial_or_lock(states: Any) -> None:
    # A prefork child is forked while another thread of the parent is in the middle
    # of a trial call, holding the breaker's lock: in the child that thread does not
    # exist, so neither the lock nor the trial would ever be released there.
    import os
    import threading
    import time

    breaker = states.client.breaker
    for _ in range(breaker.threshold):
        breaker.record_failure()
    breaker._opened_at -= breaker.reset_timeout  # its reset timeout has passed
    assert breaker.allow()  # the parent's trial call is running...
    holder = threading.Thread(target=breaker._lock.acquire)  # ...holding the lock
    holder.start()
    holder.join()
    try:
        pid = os.fork()  # TenantStates resets itself in the child (os.register_at_fork)
        if pid == 0:
            code = 1
            try:  # the child gets its own trial, without hanging on the lock
                code = 0 if breaker.allow() and not breaker.allow() else 2
            finally:
                os._exit(code)
        deadline = time.monotonic() + 10
        done, status = os.waitpid(pid, os.WNOHANG)
        while not done and time.monotonic() < deadline:
            time.sleep(0.01)  # a child's exit is not announced to a thread: poll it
            done, status = os.waitpid(pid, os.WNOHANG)
        if not done:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise AssertionError("the child hung on the parent's breaker lock")
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        breaker._lock.release()
