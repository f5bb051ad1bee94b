"""``python -m bench faults``: fault injection with real processes.

Real `celery worker` subprocesses (prefork, 2 processes, ``task_acks_late``), real
brokers (a throw-away Redis, and RabbitMQ when it is reachable), a fake State API
that is slowed, broken and refused, a store Redis that is stopped and restarted.
Every scenario is a module of this package; each prints its figures and returns
:class:`bench.results.Result` rows with ``met`` flags. They measure the code as it
is: a MISS is a finding, not a failure of the suite.

Nothing here touches the machine's shared Redis or RabbitMQ beyond its own names:
every Redis the scenarios stop is one they started, every RabbitMQ queue has the
run's prefix and is deleted afterwards. Every wait has a deadline; every process is
stopped in a ``finally``.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from contextlib import ExitStack

from bench.results import Result
from bench.workers import AMQP_URL, amqp_reachable, shown
from celery_tenant_gate.testing import EmbeddedRedis


def _crashed(name: str, started: float) -> Result:
    """The row of a scenario that raised: printed with its traceback, never met."""
    traceback.print_exc()
    seconds = time.monotonic() - started
    return Result(
        name=f"faults.{name}.crashed",
        figure=seconds,
        unit="s",
        baseline_name="seconds it ran before it raised (see the traceback above)",
        baseline=max(seconds, 1e-3),
        ratio=seconds / max(seconds, 1e-3),
        goal="the scenario runs to its end",
        met=False,
    )


def run(redis_url: str | None = None, quick: bool = False) -> list[Result]:
    from bench.faults import (  # noqa: PLC0415 - the scenarios import a lot
        big_release,
        kill9,
        kill_release,
        state_api,
        store_down,
        store_restart,
    )

    results: list[Result] = []
    with ExitStack() as stack:
        # The broker (Redis) and the ledger: never stopped by a scenario.
        if redis_url is None:
            redis_url = stack.enter_context(EmbeddedRedis()).url
        why = amqp_reachable()
        amqp = AMQP_URL if why is None else None
        if amqp is None:
            print(f"  faults: RabbitMQ rows skipped: no RabbitMQ at {shown(AMQP_URL)} ({why})")
        ledger = redis_url
        brokers = [redis_url] + ([amqp] if amqp else [])
        # --quick (about 90 s, to keep the machinery working): fewer variants, each
        # store scenario on one broker (RabbitMQ, as in the issue, when it answers).
        one = [amqp or redis_url]
        scenarios: list[tuple[str, Callable[[], list[Result]]]] = []
        for broker in [redis_url] if quick else brokers:
            kinds = ("delay", "refused") if quick else state_api.FAULTS
            scenarios.append(
                (
                    "state_api",
                    lambda b=broker, k=kinds: state_api.run_broker(b, ledger, quick, k),
                )
            )
        for broker in one if quick else brokers:
            scenarios.append(("store_down", lambda b=broker: store_down.run(b, ledger, quick)))
            scenarios.append(
                ("store_restart", lambda b=broker: store_restart.run(b, ledger, quick))
            )
        for broker in brokers:
            scenarios.append(("kill_release", lambda b=broker: kill_release.run(b, ledger, quick)))
            scenarios.append(("kill9", lambda b=broker: kill9.run(b, ledger, quick)))
        scenarios.append(("big_release", lambda: big_release.run(quick)))
        for name, scenario in scenarios:
            started = time.monotonic()
            try:
                rows = scenario()
            except Exception:
                rows = [_crashed(name, started)]
            print(f"  faults.{name}: {time.monotonic() - started:.1f} s", flush=True)
            results.extend(rows)
    return results
