"""The Celery app the worker tests run, in-process or as `celery -A gateapp worker`.

Configured from the environment so a subprocess worker matches the test:
GATE_BROKER, GATE_REDIS, GATE_PREFIX, GATE_STATE_API, GATE_ACKS_LATE.
Every body that runs appends a JSON line to the Redis list `{prefix}:ran`.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis
from celery import Celery

from celery_tenant_gate import install, tenant_task

PREFIX = os.environ.get("GATE_PREFIX", "tgtest")
REDIS = os.environ.get("GATE_REDIS", "redis://127.0.0.1:6379/0")

app = Celery("gateapp", broker=os.environ.get("GATE_BROKER", REDIS))
app.conf.update(
    tenant_gate_redis_url=REDIS,
    tenant_gate_key_prefix=PREFIX,
    tenant_gate_state_api_url=os.environ.get("GATE_STATE_API", "http://127.0.0.1:9/api/state"),
    tenant_gate_state_api_retries=0,
    tenant_gate_min_ttl=float(os.environ.get("GATE_MIN_TTL", "5")),
    tenant_gate_sweep_interval=float(os.environ.get("GATE_SWEEP", "0.2")),
    task_acks_late=os.environ.get("GATE_ACKS_LATE", "0") == "1",
    task_default_queue=f"{PREFIX}.work",
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
gate = install(app)
_results = redis.Redis.from_url(REDIS)


def _ran(**fields: Any) -> None:
    _results.rpush(f"{PREFIX}:ran", json.dumps({"at": time.time(), **fields}))


@tenant_task(app, bind=True, name="gateapp.work")
def work(self: Any, context_id: str, n: int, **kwargs: Any) -> int:
    _ran(
        kind="work",
        id=self.request.id,
        ctx=context_id,
        n=n,
        kwargs=kwargs,
        retries=self.request.retries,
        api=self.tenant.api,
    )
    return n


@tenant_task(app, bind=True, name="gateapp.slow")
def slow(self: Any, context_id: str, n: int, seconds: float = 0.05) -> int:
    time.sleep(seconds)  # a task that takes a while, so others pile up behind it
    _ran(kind="slow", id=self.request.id, ctx=context_id, n=n)
    return n


@app.task(name="gateapp.plain")
def plain(n: int) -> int:
    _ran(kind="plain", n=n)
    return n
