from celery_tenant_gate.circuit import CircuitBreaker


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
