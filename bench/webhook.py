"""Verified notifications a second on one core, and p99 from request to 202.

The webhook (token checked against the JWKS, replay recorded in Redis, control task
sent to a Redis broker) is served by a plain WSGI server pinned to core 0; the client
posts from core 1, one request at a time, each a distinct freshly signed
notification. Baseline: the same server answering 202 without looking at the body.
Goal (issue 4): at least 1,000 a second, p99 under 5 ms.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import redis
import requests

from celery_tenant_gate.testing import EmbeddedRedis, FakeSuperOffice

from .results import Result

HERE = Path(__file__).parent


def _post_all(url: str, bodies: list[dict[str, object]]) -> list[float]:
    latencies = []
    with requests.Session() as session:
        for body in bodies:
            started = time.perf_counter()
            answer = session.post(url, json=body, timeout=10)
            latencies.append(time.perf_counter() - started)
            if answer.status_code != 202:
                raise RuntimeError(f"{url} answered {answer.status_code}: {answer.text}")
    return latencies


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


def run(redis_url: str | None = None, quick: bool = False) -> list[Result]:
    count = 300 if quick else 3_000
    prefix = f"tgbench:{uuid.uuid4().hex[:8]}"
    with ExitStack() as stack:
        if redis_url is None:
            redis_url = stack.enter_context(EmbeddedRedis()).url
        superoffice = stack.enter_context(FakeSuperOffice())
        client = redis.Redis.from_url(redis_url)
        stack.callback(lambda: [client.delete(k) for k in client.scan_iter(f"{prefix}*")])
        port_file = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "port"
        server = subprocess.Popen(
            [sys.executable, "-m", "bench.webhook_server", str(port_file), redis_url, prefix,
             superoffice.jwks_url, superoffice.issuer],
            cwd=HERE.parent,
        )
        stack.callback(server.wait, 10)
        stack.callback(server.terminate)
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text():
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("the webhook server did not start")
            time.sleep(0.02)  # a file another process writes: nothing to wait on
        base = f"http://127.0.0.1:{port_file.read_text()}"
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {1})
        bodies = [
            superoffice.notification(f"Cust{n + 1}", n % 6 if n % 6 != 5 else 2)
            for n in range(count)
        ]
        _post_all(base + "/hook", bodies[:50])  # warm: JWKS fetched, connections made
        _post_all(base + "/plain", bodies[:50])
        started = time.perf_counter()
        verified = _post_all(base + "/hook", bodies[50:])
        verified_rate = len(verified) / (time.perf_counter() - started)
        started = time.perf_counter()
        plain = _post_all(base + "/plain", bodies[50:])
        plain_rate = len(plain) / (time.perf_counter() - started)
        queued = client.llen(f"{prefix}:control")
        if queued != count:
            raise RuntimeError(f"{queued} control tasks queued for {count} notifications")
    p99_ms, plain_p99_ms = _p99(verified) * 1000, _p99(plain) * 1000
    return [
        Result(
            name="webhook.verified_per_second",
            figure=verified_rate,
            unit="notifications/s",
            baseline_name="same server, plain 202",
            baseline=plain_rate,
            ratio=verified_rate / plain_rate,
            goal=">= 1000 a second on one core",
            met=verified_rate >= 1000,
        ),
        Result(
            name="webhook.p99_request_to_202",
            figure=p99_ms,
            unit="ms",
            baseline_name="same server, plain 202",
            baseline=plain_p99_ms,
            ratio=p99_ms / plain_p99_ms,
            goal="p99 < 5 ms",
            met=p99_ms < 5.0,
        ),
    ]
