"""The tenant session's cost per request: a ``TenantSession`` GET (state check from a
warm cache, URL built on the tenant's ``Api``) against a plain ``requests.Session``
GET of the same URL, both to the same loopback server, in the same run.

Goal (issue 15): at most 2 % added latency per request with a warm cache.
"""

from __future__ import annotations

import statistics
import uuid
from collections.abc import Callable
from contextlib import ExitStack

import requests

from bench.results import Result, alternating, by_round, timed
from celery_tenant_gate.app.session import TenantSession, make_adapter
from celery_tenant_gate.config.settings import GateConfig
from celery_tenant_gate.gate.lookup import TenantStates
from celery_tenant_gate.model.apiurl import api_url
from celery_tenant_gate.testing import EmbeddedRedis, FakeSuperOffice, FakeTenantApi

PATH = "v1/Contact/5"


def _round(get: Callable[[], object], requests_per_round: int) -> Callable[[], float]:
    """One round: the median seconds of *requests_per_round* calls of *get*."""

    def measure() -> float:
        return statistics.median(timed(get, requests_per_round))

    return measure


def run(redis_url: str | None = None, quick: bool = False) -> list[Result]:
    rounds, per_round = (6, 300) if quick else (20, 1000)
    with ExitStack() as stack:
        if redis_url is None:
            redis_url = stack.enter_context(EmbeddedRedis()).url
        superoffice = stack.enter_context(FakeSuperOffice())
        host = stack.enter_context(FakeTenantApi())
        superoffice.set_state("Cust1", "Running", valid_for=3600, endpoint=host.base_url)
        prefix = f"tgbench:{uuid.uuid4().hex[:8]}"
        config = GateConfig(
            redis_url=redis_url, key_prefix=prefix, state_api_url=superoffice.state_api_url
        )
        states = TenantStates.from_config(config)
        stack.callback(states.close)
        stack.callback(lambda: states.store.client.delete(*states.store.client.keys(f"{prefix}:*")))
        assert states.may_run("Cust1")
        listener = states.watch.listener
        assert listener is not None and listener.subscribed.wait(10)

        plain = stack.enter_context(requests.Session())
        tenant = stack.enter_context(TenantSession("Cust1", states, adapter=make_adapter()))
        url = f"{host.api('Cust1')}/{PATH}"
        plain_get: Callable[[], object] = lambda: plain.get(url, timeout=10).content  # noqa: E731
        tenant_get: Callable[[], object] = lambda: tenant.get(PATH, timeout=10).content  # noqa: E731
        for get in (plain_get, tenant_get):  # connections open, cache warm
            for _ in range(50):
                get()
        calls_before = superoffice.calls("Cust1")
        seconds = alternating(
            rounds,
            {"plain": _round(plain_get, per_round), "tenant": _round(tenant_get, per_round)},
        )
        assert superoffice.calls("Cust1") == calls_before, "the benchmark must run from the cache"
        check_us = _check_us(tenant, 20_000 if quick else 200_000)

    plain_us = statistics.median(seconds["plain"]) * 1e6
    tenant_us = statistics.median(seconds["tenant"]) * 1e6
    print(
        "session rounds (us/request): "
        + by_round({k: [v * 1e6 for v in vs] for k, vs in seconds.items()}),
        flush=True,
    )
    return [
        Result(
            name="session.get_vs_plain_requests_get",
            figure=tenant_us,
            unit="us/request",
            baseline_name="plain requests.Session GET, same loopback server",
            baseline=plain_us,
            ratio=tenant_us / plain_us,
            goal="ratio <= 1.02 (at most 2 % added latency, warm cache)",
            met=tenant_us / plain_us <= 1.02,
        ),
        Result(
            name="session.state_check_and_url_vs_plain_get",
            figure=check_us,
            unit="us/request",
            baseline_name="plain requests.Session GET, same loopback server",
            baseline=plain_us,
            ratio=check_us / plain_us,
            goal="informational: the session's own work per request (state check, URL)",
            met=True,
        ),
    ]


def _check_us(session: TenantSession, calls: int) -> float:
    """Microseconds a call of what the session adds before sending (best of 5)."""

    def loop() -> None:
        for _ in range(calls):
            api_url(session._checked_api(), PATH)

    return min(timed(loop, 5)) / calls * 1e6
