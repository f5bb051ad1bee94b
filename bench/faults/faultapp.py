"""The Celery app the fault scenarios run, as `celery -A bench.faults.faultapp worker`.

Configured from the environment, so that a worker subprocess matches the scenario's
own twin of the app (made with :func:`create_app` from the same mapping):

- TGF_BROKER: the broker URL; TGF_STORE: the Redis of the tenant state (the gate's
  store); TGF_LEDGER: the Redis the task bodies write to (never the store, which a
  scenario may stop); TGF_PREFIX: the run's prefix (keys, queues);
  TGF_STATE_API: the State API URL; TGF_PARENT: the scenario's pid (a worker exits
  when that process is gone, even killed);
- TGF_SWEEP (seconds between sweeps, default 2.0, the package's), TGF_ERROR_RETRY
  (``tenant_gate_error_retry_interval``), TGF_READ_TIMEOUT
  (``tenant_gate_state_api_read_timeout``) and TGF_LOCK_TIMEOUT
  (``tenant_gate_lock_timeout``), default the package's; TGF_VISIBILITY
  (Redis broker: seconds before a killed worker's unacknowledged tasks come back,
  default 600: longer than any stall a scenario causes, which would otherwise
  redeliver tasks still waiting in a blocked worker).

Otherwise the package's defaults: State API timeouts, retries, circuit breaker,
lock timeout, grace period, fail-closed policy. ``task_acks_late`` is on, the prefetch
multiplier Celery's default (4).

The one task, ``tgfault.work(context_id, seq, busy_ms=0)``, is tenant-scoped; its body
first RPUSHes ``"{ctx} {seq} {pid} {time}"`` to ``{prefix}:ran`` on the ledger Redis,
then takes *busy_ms* milliseconds (its own work, a call out, say). A worker RPUSHes its
pid to ``{prefix}:ready`` once it consumes.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from typing import Any

import redis
from celery import Celery
from celery.signals import worker_ready

from celery_tenant_gate import install, tenant_task

TASK = "tgfault.work"


def create_app(env: Mapping[str, str]) -> Celery:
    prefix = env["TGF_PREFIX"]
    broker = env["TGF_BROKER"]
    app = Celery("tgfault", broker=broker, set_as_current=False)
    app.conf.update(
        tenant_gate_redis_url=env["TGF_STORE"],
        tenant_gate_key_prefix=prefix,
        tenant_gate_state_api_url=env["TGF_STATE_API"],
        tenant_gate_sweep_interval=float(env.get("TGF_SWEEP") or 2.0),
        tenant_gate_queue_template=f"{prefix}.tenant.{{ctx}}",
        tenant_gate_control_queue=f"{prefix}.control",
        # The scenarios' stored states are meant to last the run.
        tenant_gate_max_ttl=7200.0,
        task_default_queue=f"{prefix}.work",
        task_acks_late=True,
        task_ignore_result=True,
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
    )
    if env.get("TGF_ERROR_RETRY"):
        app.conf.tenant_gate_error_retry_interval = float(env["TGF_ERROR_RETRY"])
    if env.get("TGF_LOCK_TIMEOUT"):
        app.conf.tenant_gate_lock_timeout = float(env["TGF_LOCK_TIMEOUT"])
    if env.get("TGF_READ_TIMEOUT"):
        app.conf.tenant_gate_state_api_read_timeout = float(env["TGF_READ_TIMEOUT"])
    if broker.startswith("redis"):
        app.conf.broker_transport_options = {
            "visibility_timeout": float(env.get("TGF_VISIBILITY") or 600.0),
            # kombu looks for messages to restore every 10 s, restoring on every 10th
            # look: every second here, so that a scenario is bounded.
            "unacked_restore_interval": 1,
            "unacked_restore_throttle": 1,
            "unacked_mutex_expire": 5,
        }
    install(app)
    ledger = redis.Redis.from_url(env["TGF_LEDGER"])
    ran_key = f"{prefix}:ran"

    @tenant_task(app, name=TASK, shared=False)
    def work(context_id: str, seq: int, busy_ms: int = 0) -> None:
        ledger.rpush(ran_key, f"{context_id} {seq} {os.getpid()} {time.time():.6f}")
        if busy_ms:
            time.sleep(busy_ms / 1000)  # the task's own work (a call to a CRM API, say)

    del work  # registered on the app by name

    def ready(**_: Any) -> None:
        ledger.rpush(f"{prefix}:ready", str(os.getpid()))

    app._tgfault_ready = ready  # connected only in a worker (see __getattr__)
    return app


def _watch_parent() -> None:
    """Exit when the scenario that started this worker is gone."""
    parent = int(os.environ.get("TGF_PARENT") or 0)
    if not parent:
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(3)

    threading.Thread(target=watch, name="tgfault-parent-watch", daemon=True).start()


_worker_app: Celery | None = None


def __getattr__(name: str) -> Any:
    """``app``: the worker's app, made from the environment on first use."""
    global _worker_app  # noqa: PLW0603 - one app per worker process
    if name != "app":
        raise AttributeError(name)
    if _worker_app is None:
        _watch_parent()
        _worker_app = create_app(os.environ)
        worker_ready.connect(_worker_app._tgfault_ready, weak=False)
    return _worker_app
