"""The tenant session's cost per request: a ``TenantSession`` GET (state check from a
warm cache, URL built on the tenant's ``Api``) against a plain ``requests.Session``
GET of the same URL, both to the same loopback server (in its own process, so that it
does not share the client's GIL), in the same run. The two alternate request by
request (A B, B A, ...): the machine's drift hits both alike.

Goal (issue 15): at most 2 % added latency per request with a warm cache.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import requests

from bench.results import Result, by_round, timed
from celery_tenant_gate.app.session import TenantSession, make_adapter
from celery_tenant_gate.config.settings import GateConfig
from celery_tenant_gate.gate.lookup import TenantStates
from celery_tenant_gate.model.apiurl import api_url
from celery_tenant_gate.testing import EmbeddedRedis, FakeSuperOffice

PATH = "v1/Contact/5"


_SERVER = (
    "import sys\n"
    "from celery_tenant_gate.testing import FakeTenantApi\n"
    "with FakeTenantApi() as host:\n"
    "    print(host.base_url, flush=True)\n"
    "    sys.stdin.read()\n"
)


@contextmanager
def _server() -> Iterator[str]:
    """A :class:`FakeTenantApi` in a child process; its base URL."""
    child = subprocess.Popen(
        [sys.executable, "-c", _SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        yield child.stdout.readline().strip()
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10)


def _interleaved(
    rounds: int, per_round: int, plain: Callable[[], object], tenant: Callable[[], object]
) -> dict[str, list[float]]:
    """Each round's median seconds a request, the two kinds alternating request by request."""
    medians: dict[str, list[float]] = {"plain": [], "tenant": []}
    for _ in range(rounds):
        times: dict[str, list[float]] = {"plain": [], "tenant": []}
        for i in range(per_round):
            pair = (("plain", plain), ("tenant", tenant))
            for name, get in pair if i % 2 == 0 else pair[::-1]:
                times[name] += timed(get, 1)
        for name, values in times.items():
            medians[name].append(statistics.median(values))
    return medians


def run(redis_url: str | None = None, quick: bool = False) -> list[Result]:
    rounds, per_round = (6, 300) if quick else (20, 1000)
    with ExitStack() as stack:
        if redis_url is None:
            redis_url = stack.enter_context(EmbeddedRedis()).url
        superoffice = stack.enter_context(FakeSuperOffice())
        base_url = stack.enter_context(_server())
        superoffice.set_state("Cust1", "Running", valid_for=3600, endpoint=base_url)
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
        url = f"{base_url}/Cust1/api/{PATH}"
        plain_get: Callable[[], object] = lambda: plain.get(url, timeout=10).content  # noqa: E731
        tenant_get: Callable[[], object] = lambda: tenant.get(PATH, timeout=10).content  # noqa: E731
        for get in (plain_get, tenant_get):  # connections open, cache warm
            for _ in range(50):
                get()
        calls_before = superoffice.calls("Cust1")
        seconds = _interleaved(rounds, per_round, plain_get, tenant_get)
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
