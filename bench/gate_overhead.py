"""What the gate costs a worker: the drain rate of tenant-scoped no-op tasks against
the drain rate of the same number of plain ``@app.task`` no-op tasks.

One ``celery worker -P solo`` subprocess (default prefetch, one queue) drains both,
in alternating rounds (plain, gated, plain, gated, ...); each round is published in
full while the worker is kept busy by a blocker task, then timed from the first
body that ran to the last. Both bodies do the same one Redis RPUSH. The tenants
(four) are running and their states pre-learnt, so no State API call is made
(checked).

N tasks of each kind (40,000; 2,000 with --quick) are drained in rounds of 2,000
(20 rounds of each kind; 4 of 500 with --quick): on a 2-core machine that runs other
work too, short alternating rounds let both kinds see the same noise, and the median
round drops the stalls. (10 rounds were too few on RabbitMQ, where a round of 2,000
lasts about 0.7 s: its ratio moved 0.94-0.98 from run to run of the same code.)

Goal (issue 3): gated drain rate >= 0.95 x plain drain rate (medians of the rounds).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

from bench.results import Result, alternating, by_round
from bench.workers import AMQP_URL, Namespace, amqp_reachable, running, shown
from celery_tenant_gate.testing import EmbeddedRedis, FakeSuperOffice

GOAL = 0.95
TENANTS = [f"Cust{i}" for i in range(1, 5)]


def _measure(
    label: str, broker: str, redis_url: str, state_api: str, count: int, rounds: int
) -> Result:
    ns = Namespace(broker, redis_url, state_api)
    per_round = count // rounds
    try:
        ns.learn_running(TENANTS)
        timeout = 60 + per_round / 50  # a drain far slower than 50 tasks/s is broken
        with running(ns) as worker:

            def both(into: str, n: int = 200) -> None:
                ns.publish(ns.plain, TENANTS, n, into)
                ns.publish(ns.gated, TENANTS, n, into)

            def drain(task: Any) -> Callable[[], float]:
                return lambda: ns.timed_drain(
                    worker,
                    lambda into: ns.publish(task, TENANTS, per_round, into),
                    per_round,
                    timeout,
                )

            ns.timed_drain(worker, both, 400, timeout)  # warm-up, untimed
            rates = alternating(rounds, {"plain": drain(ns.plain), "gated": drain(ns.gated)})
        print(
            f"  gate.overhead.{label}: {rounds} x {per_round} tasks a kind; "
            f"tasks/s: {by_round(rates)}"
        )
        if ns.stalls:
            print(f"    stalls (s): {' '.join(f'{g:.1f}' for g in ns.stalls)}")
    finally:
        ns.cleanup()
    plain, gated = statistics.median(rates["plain"]), statistics.median(rates["gated"])
    return Result(
        name=f"gate.overhead.{label}",
        figure=gated,
        unit="tasks/s",
        baseline_name="plain @app.task drain (median round)",
        baseline=plain,
        ratio=gated / plain,
        goal=f"ratio >= {GOAL}",
        met=gated / plain >= GOAL,
    )


def run(redis_url: str | None = None, quick: bool = False) -> list[Result]:
    count = 2_000 if quick else 40_000
    rounds = 4 if quick else 20
    results: list[Result] = []
    with ExitStack() as stack:
        if redis_url is None:
            redis_url = stack.enter_context(EmbeddedRedis()).url
        superoffice = stack.enter_context(FakeSuperOffice())
        api = superoffice.state_api_url
        results.append(_measure("redis", redis_url, redis_url, api, count, rounds))
        why = amqp_reachable()
        if why is None:
            results.append(_measure("rabbitmq", AMQP_URL, redis_url, api, count, rounds))
        else:
            print(f"  gate.overhead.rabbitmq skipped: no RabbitMQ at {shown(AMQP_URL)} ({why})")
        assert superoffice.calls() == 0, "the tenants' states must come from the store"
    return results
