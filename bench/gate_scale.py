"""Does the gate slow down with many tenants? The drain rate of running tenants'
tasks among 10,000 tenants of which 1,000 are paused, against the drain rate of
the same number of tasks of the one tenant of a one-tenant world.

Two worlds (two key prefixes), each with its own ``celery worker -P solo``
subprocess configured alike (default prefetch, one queue):

- *one*: one running tenant;
- *many*: 10,000 running tenants (states pre-learnt), 1,000 of them paused by hand
  (``gate.pause``), so the worker's sweeper walks 1,000 paused tenants.

Each worker first drains an untimed warm-up round: in *many*, one task for every
tenant, so its cache knows them all and each paused tenant holds one task. Then
the worlds drain alternating timed rounds (as in ``gate_overhead``) of tasks
spread round-robin over the 9,000 running tenants (*many*) or of the one tenant
(*one*): 20,000 tasks a world in all (2,000 over 1,000 tenants, 100 paused, with
--quick). No State API call is made (checked).

Goal (issue 3): many-tenant drain rate >= 0.9 x one-tenant drain rate (medians).
"""

from __future__ import annotations

import statistics
from contextlib import ExitStack

from bench.results import Result, alternating, by_round
from bench.workers import Namespace, running
from celery_tenant_gate.testing import EmbeddedRedis, FakeSuperOffice

GOAL = 0.9
ONE = ["Cust1"]


def _measure(
    label: str,
    broker: str,
    redis_url: str,
    state_api: str,
    *,
    count: int,
    tenants: int,
    paused: int,
    rounds: int,
) -> Result:
    one = Namespace(broker, redis_url, state_api)
    many = Namespace(broker, redis_url, state_api)
    per_round = count // rounds
    timeout = 60 + max(per_round, tenants) / 50
    try:
        one.learn_running(ONE)
        everyone = [f"Cust{i}" for i in range(1, tenants + 1)]
        many.learn_running(everyone)
        step = tenants // paused
        stopped = everyone[::step][:paused]  # Cust1, Cust11, ...: the last one runs
        for ctx in stopped:
            many.gate.pause(ctx, "benchmark: paused tenant")
        stopped_set = set(stopped)
        runners = [ctx for ctx in everyone if ctx not in stopped_set]

        with running(one) as one_worker, running(many) as many_worker:
            # Warm-up, untimed: every tenant once (the paused ones' tasks are held).
            one.timed_drain(
                one_worker, lambda into: one.publish(one.gated, ONE, 100, into), 100, timeout
            )
            many.timed_drain(
                many_worker,
                lambda into: many.publish(many.gated, everyone, tenants, into),
                len(runners),
                timeout,
            )
            for ctx in (stopped[0], stopped[-1]):
                held = many.gate.state(ctx).held
                assert held == 1, f"{ctx} holds {held} task(s), not 1"

            offset = 0

            def one_round() -> float:
                return one.timed_drain(
                    one_worker,
                    lambda into: one.publish(one.gated, ONE, per_round, into),
                    per_round,
                    timeout,
                )

            def many_round() -> float:
                nonlocal offset
                start, offset = offset, offset + per_round
                return many.timed_drain(
                    many_worker,
                    lambda into: many.publish(many.gated, runners, per_round, into, start),
                    per_round,
                    timeout,
                )

            rates = alternating(rounds, {"one": one_round, "many": many_round})
        print(
            f"  gate.scale.{label}: {tenants} tenants ({paused} paused), "
            f"{rounds} x {per_round} tasks a world; tasks/s: {by_round(rates)}"
        )
        if one.stalls or many.stalls:
            stalls = " ".join(f"{g:.1f}" for g in one.stalls + many.stalls)
            print(f"    stalls (s): {stalls}")
    finally:
        try:
            one.cleanup()
        finally:
            many.cleanup()
    base, figure = statistics.median(rates["one"]), statistics.median(rates["many"])
    return Result(
        name=f"gate.scale.{label}",
        figure=figure,
        unit="tasks/s",
        baseline_name="drain with 1 tenant (median round)",
        baseline=base,
        ratio=figure / base,
        goal=f"ratio >= {GOAL}",
        met=figure / base >= GOAL,
    )


def run(redis_url: str | None = None, quick: bool = False) -> list[Result]:
    if quick:
        sizes = {"count": 2_000, "tenants": 1_000, "paused": 100, "rounds": 4}
    else:
        sizes = {"count": 20_000, "tenants": 10_000, "paused": 1_000, "rounds": 10}
    with ExitStack() as stack:
        if redis_url is None:
            redis_url = stack.enter_context(EmbeddedRedis()).url
        superoffice = stack.enter_context(FakeSuperOffice())
        result = _measure("redis", redis_url, redis_url, superoffice.state_api_url, **sizes)
        assert superoffice.calls() == 0, "the tenants' states must come from the store"
    return [result]
