"""Shared fixtures: a real Redis, a real local SuperOffice stand-in, and configs.

Redis: ``TENANT_GATE_TEST_REDIS_URL`` (or ``REDIS_URL``) when set, else a throw-away
embedded redis-server. Every test gets its own key prefix, so a shared server is safe.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from celery_tenant_gate.config.settings import GateConfig
from celery_tenant_gate.gate.lookup import TenantStates
from celery_tenant_gate.testing import EmbeddedRedis, FakeSuperOffice

IN_CI = bool(os.environ.get("CI"))


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("TENANT_GATE_TEST_REDIS_URL") or os.environ.get("REDIS_URL")
    if url:
        try:
            redis.Redis.from_url(url, socket_connect_timeout=2).ping()
        except redis.RedisError as exc:
            pytest.fail(f"the Redis at {url} (from the environment) is not reachable: {exc}")
        yield url
        return
    with EmbeddedRedis() as server:
        yield server.url


AMQP_URL = os.environ.get("TENANT_GATE_TEST_AMQP_URL") or "amqp://guest:guest@127.0.0.1:5672//"


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """RabbitMQ: skipped when unreachable on a laptop, a failure in CI."""
    from kombu.connection import Connection

    try:
        with Connection(AMQP_URL, connect_timeout=5) as conn:
            conn.ensure_connection(max_retries=1, timeout=5)
    except Exception as exc:
        if IN_CI:
            pytest.fail(f"RabbitMQ at {AMQP_URL} is not reachable: {exc}")
        pytest.skip(f"RabbitMQ at {AMQP_URL} is not reachable: {exc}")
    return AMQP_URL


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def key_prefix(redis_client: redis.Redis) -> Iterator[str]:
    prefix = f"tgtest:{uuid.uuid4().hex[:12]}"
    yield prefix
    keys = list(redis_client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        redis_client.delete(*keys)


@pytest.fixture
def superoffice() -> Iterator[FakeSuperOffice]:
    with FakeSuperOffice() as fake:
        yield fake


@pytest.fixture
def config(redis_url: str, key_prefix: str, superoffice: FakeSuperOffice) -> GateConfig:
    return GateConfig(
        redis_url=redis_url,
        key_prefix=key_prefix,
        state_api_url=superoffice.state_api_url,
        state_api_retries=0,
        state_api_backoff=0.01,
        state_api_read_timeout=5.0,
        lock_timeout=10.0,
    )


@pytest.fixture
def states(config: GateConfig) -> Iterator[TenantStates]:
    instance = TenantStates.from_config(config)
    yield instance
    instance.close()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI nothing may be skipped: a skipped Redis or RabbitMQ test is a failed run."""
    if not IN_CI or exitstatus != 0:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped:
        reporter.write_line(  # type: ignore[union-attr]
            f"CI is set and {len(skipped)} test(s) were skipped: failing the run", red=True
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def harness(env: dict[str, str], redis_url: str, redis_client: redis.Redis) -> Iterator[Any]:
    """Real workers for a test (its `env` fixture says which broker); cleans up after."""
    from kombu.connection import Connection
    from workers import Harness

    harness = Harness(env, redis_url)
    yield harness
    harness.stop()
    prefix = env["GATE_PREFIX"]
    for key in redis_client.scan_iter(match=f"_kombu.binding.{prefix}*", count=1000):
        redis_client.delete(key)
    if env["GATE_BROKER"].startswith("amqp"):
        with Connection(env["GATE_BROKER"]) as conn:
            channel = conn.default_channel
            for ctx in ("Cust1", "Cust2", "Cust3", "Cust4"):
                for name in (f"{prefix}:q.work", f"{prefix}:q.tenant.{ctx}"):
                    try:
                        channel.queue_delete(name)
                    except Exception:
                        channel = conn.channel()
