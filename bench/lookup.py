"""The cached "may this tenant run?" against a dict look-up and a Redis round trip.

Goal (issue 2): under 5 microseconds a call, and under 1/20 of a Redis GET.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import ExitStack

import redis

from bench.results import Result, timed
from celery_tenant_gate.config.settings import GateConfig
from celery_tenant_gate.gate.lookup import TenantStates
from celery_tenant_gate.testing import EmbeddedRedis, FakeSuperOffice


def _per_call_us(fn: Callable[[], object], calls: int, repeats: int = 5) -> float:
    """Best of *repeats* runs, in microseconds a call."""

    def loop() -> None:
        for _ in range(calls):
            fn()

    return min(timed(loop, repeats)) / calls * 1e6


def run(redis_url: str | None = None, quick: bool = False) -> list[Result]:
    calls = 20_000 if quick else 200_000
    with ExitStack() as stack:
        if redis_url is None:
            redis_url = stack.enter_context(EmbeddedRedis()).url
        superoffice = stack.enter_context(FakeSuperOffice())
        superoffice.set_state("Cust1", "Running", valid_for=3600)
        prefix = f"tgbench:{uuid.uuid4().hex[:8]}"
        config = GateConfig(
            redis_url=redis_url, key_prefix=prefix, state_api_url=superoffice.state_api_url
        )
        states = TenantStates.from_config(config)
        stack.callback(states.close)
        assert states.may_run("Cust1")
        listener = states.watch.listener
        assert listener is not None and listener.subscribed.wait(10)
        assert states.may_run("Cust1")  # cached from here on

        known = {"Cust1": True}
        dict_us = _per_call_us(lambda: known.get("Cust1") is True, calls)
        cached_us = _per_call_us(lambda: states.may_run("Cust1"), calls)
        client = redis.Redis.from_url(redis_url)
        stack.callback(lambda: client.delete(*client.keys(f"{prefix}:*")))
        client.set(f"{prefix}:probe", "1")
        redis_us = _per_call_us(lambda: client.get(f"{prefix}:probe"), calls // 20, repeats=3)
        assert superoffice.calls("Cust1") == 1, "the benchmark must run from the cache"

    return [
        Result(
            name="lookup.cached_may_run_vs_redis_get",
            figure=cached_us,
            unit="us/call",
            baseline_name="redis GET round trip",
            baseline=redis_us,
            ratio=cached_us / redis_us,
            goal="< 5 us a call and ratio < 0.05",
            met=cached_us < 5.0 and cached_us / redis_us < 0.05,
        ),
        Result(
            name="lookup.cached_may_run_vs_dict_get",
            figure=cached_us,
            unit="us/call",
            baseline_name="plain dict look-up",
            baseline=dict_us,
            ratio=cached_us / dict_us,
            goal="informational: the cost over the cheapest possible look-up",
            met=True,
        ),
    ]
