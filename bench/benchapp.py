"""The Celery app the worker benchmarks run, as `celery -A bench.benchapp worker`.

Configured from the environment so the subprocess worker matches the benchmark
process (which builds the same app with :func:`create_app`):
TGBENCH_BROKER, TGBENCH_REDIS, TGBENCH_PREFIX, TGBENCH_STATE_API; TGBENCH_REMOTE_CONTROL
(``1``: the worker answers broadcasts such as ``cancel_consumer``; off by default); and
TGBENCH_PARENT, the benchmark's pid: the worker exits when that process is gone.
A worker sets ``{prefix}:ready:{pid}`` once it consumes.

Every task body does the same one Redis call: it RPUSHes its finish time to the
list its ``into`` argument names, so the benchmark can count the bodies that ran
and read when the first and the last ran. ``tgbench.block(go)`` sets ``{go}:in``
and keeps the (solo) worker busy until the benchmark sets ``go``, so that a whole
batch is published before any of it runs.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import fields
from typing import Any

import redis
from celery import Celery
from celery.signals import worker_ready

from celery_tenant_gate import install, tenant_task
from celery_tenant_gate.config.settings import GateConfig

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
#: Longest time the blocker task waits for its go key (then it returns anyway).
BLOCK_LIMIT = 300.0


def create_app(
    broker: str, redis_url: str, prefix: str, state_api: str, remote_control: bool = False
) -> Celery:
    """The benchmark app: settings, the gate, and the three tasks."""
    app = Celery("benchapp", broker=broker, set_as_current=False)
    app.conf.update(
        tenant_gate_redis_url=redis_url,
        tenant_gate_key_prefix=prefix,
        tenant_gate_state_api_url=state_api,
        tenant_gate_state_api_retries=0,
        # Pre-learnt states stay valid for the whole run: the cache never expires.
        tenant_gate_min_ttl=5.0,
        tenant_gate_max_ttl=7200.0,
        tenant_gate_queue_template=f"{prefix}.tenant.{{ctx}}",
        task_default_queue=f"{prefix}.work",
        task_ignore_result=True,
        worker_enable_remote_control=remote_control,
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
    )
    if "control_queue" in {f.name for f in fields(GateConfig)}:
        # The gate's control queue is shared by every app by default: keep it ours.
        app.conf.tenant_gate_control_queue = f"{prefix}.control"
    install(app)
    results = redis.Redis.from_url(redis_url)

    @tenant_task(app, name="tgbench.gated", shared=False)
    def gated(context_id: str, into: str) -> None:
        results.rpush(into, time.time())

    @app.task(name="tgbench.plain", shared=False)
    def plain(context_id: str, into: str) -> None:
        results.rpush(into, time.time())

    @app.task(name="tgbench.block", shared=False)
    def block(go: str) -> None:
        results.set(f"{go}:in", "1")
        deadline = time.monotonic() + BLOCK_LIMIT
        while not results.exists(go) and time.monotonic() < deadline:
            time.sleep(0.005)

    del gated, plain, block  # registered on the app by name

    def ready(**_: Any) -> None:
        results.set(f"{prefix}:ready:{os.getpid()}", "1")

    app._tgbench_ready = ready  # connected only in the worker (see __getattr__)
    return app


_worker_app: Celery | None = None


def _watch_parent() -> None:
    """End this worker if the benchmark that started it (TGBENCH_PARENT) is gone,
    even killed: a worker left behind would sit on its queue for ever."""
    parent = int(os.environ.get("TGBENCH_PARENT") or 0)
    if not parent:
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(3)

    threading.Thread(target=watch, name="tgbench-parent-watch", daemon=True).start()


def __getattr__(name: str) -> Any:
    """``app``, the worker's app, made from the environment on first use (so the
    benchmark process, which makes its own apps, never makes this one)."""
    global _worker_app  # noqa: PLW0603 - one app per worker process
    if name != "app":
        raise AttributeError(name)
    if _worker_app is None:
        _watch_parent()
        _worker_app = create_app(
            broker=os.environ.get("TGBENCH_BROKER", DEFAULT_REDIS),
            redis_url=os.environ.get("TGBENCH_REDIS", DEFAULT_REDIS),
            prefix=os.environ.get("TGBENCH_PREFIX", "tgbench"),
            state_api=os.environ.get("TGBENCH_STATE_API", "http://127.0.0.1:9/api/state"),
            remote_control=os.environ.get("TGBENCH_REMOTE_CONTROL") == "1",
        )
        # Says when the worker consumes (every consumer step started): only then
        # does the benchmark publish anything.
        worker_ready.connect(_worker_app._tgbench_ready, weak=False)
    return _worker_app


def tasks(bench_app: Celery) -> tuple[Any, Any, Any]:
    """(gated, plain, block) of an app made by :func:`create_app`."""
    return (
        bench_app.tasks["tgbench.gated"],
        bench_app.tasks["tgbench.plain"],
        bench_app.tasks["tgbench.block"],
    )
