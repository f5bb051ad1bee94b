"""The Celery app the worker tests run as `celery -A gateapp worker`, and publish with.

Configured from the environment (:func:`make_app`), so that a subprocess worker
matches its test: GATE_BROKER, GATE_REDIS, GATE_STORE (the tenant state's Redis, if
not GATE_REDIS), GATE_PREFIX, GATE_STATE_API,
GATE_ACKS_LATE, GATE_PREFETCH, GATE_MIN_TTL, GATE_SWEEP. Every body that runs
appends a JSON line to the Redis list `{prefix}:ran`.

Observability: GATE_RECORD_SIGNALS=1 appends every signal of
`celery_tenant_gate.signals` received in the process, as a JSON line (its name, the
process id and its arguments), to the Redis list `{prefix}:signals`;
GATE_METRICS_PORT turns metrics on and serves them there; GATE_EVENTS=1 makes the
worker send task events (as `-E` does).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import Any

import redis
from celery import Celery

from celery_tenant_gate import install, tenant_session, tenant_task
from celery_tenant_gate.gate import signals


def make_app(env: Mapping[str, str]) -> Celery:
    prefix = env.get("GATE_PREFIX", "tgtest")
    redis_url = env.get("GATE_REDIS", "redis://127.0.0.1:6379/0")
    app = Celery("gateapp", broker=env.get("GATE_BROKER", redis_url), set_as_current=False)
    app.conf.update(
        tenant_gate_redis_url=env.get("GATE_STORE") or redis_url,
        tenant_gate_key_prefix=prefix,
        tenant_gate_state_api_url=env.get("GATE_STATE_API", "http://127.0.0.1:9/api/state"),
        tenant_gate_state_api_retries=0,
        tenant_gate_min_ttl=float(env.get("GATE_MIN_TTL", "5")),
        tenant_gate_sweep_interval=float(env.get("GATE_SWEEP", "0.2")),
        tenant_gate_queue_template=prefix + ":q.tenant.{ctx}",
        tenant_gate_control_queue=f"{prefix}:q.control",
        tenant_gate_webhook_min_pause=float(env.get("GATE_MIN_PAUSE", "1")),
        tenant_gate_delete_confirm_timeout=float(env.get("GATE_DELETE_TIMEOUT", "2")),
        task_default_queue=f"{prefix}:q.work",
        task_acks_late=env.get("GATE_ACKS_LATE", "0") == "1",
        worker_prefetch_multiplier=int(env.get("GATE_PREFETCH", "4")),
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        result_backend=env.get("GATE_RESULTS") or None,
        tenant_gate_webhook_jwks_url=env.get("GATE_JWKS") or None,
        tenant_gate_webhook_issuer=env.get("GATE_ISSUER") or None,
        tenant_gate_webhook_jwks_allow_http=True,  # the fake SuperOffice is http
        tenant_gate_metrics=bool(env.get("GATE_METRICS_PORT")),
        tenant_gate_metrics_port=env.get("GATE_METRICS_PORT") or None,
        tenant_gate_metrics_address="127.0.0.1",
        worker_send_task_events=env.get("GATE_EVENTS") == "1",
    )
    if env.get("GATE_VISIBILITY"):  # Redis: redeliver a killed worker's messages soon
        app.conf.broker_transport_options = {
            "visibility_timeout": float(env["GATE_VISIBILITY"]),
            # A worker killed while restoring keeps kombu's restore mutex for this long.
            "unacked_mutex_expire": 5,
            # kombu looks for messages to restore every 10 s and restores on every
            # 10th look (100 s): every second here, so that the test is bounded.
            "unacked_restore_interval": 1,
            "unacked_restore_throttle": 1,
        }
    install(app)
    results = redis.Redis.from_url(redis_url)
    if env.get("GATE_RECORD_SIGNALS") == "1":
        _record_signals(results, f"{prefix}:signals")

    def ran(**fields: Any) -> None:
        results.rpush(f"{prefix}:ran", json.dumps({"at": time.time(), **fields}))

    @tenant_task(app, shared=False, bind=True, name="gateapp.work")
    def work(self: Any, context_id: str, n: int, **kwargs: Any) -> int:
        ran(
            kind="work",
            id=self.request.id,
            ctx=context_id,
            n=n,
            kwargs=kwargs,
            retries=self.request.retries,
            api=self.tenant.api,
            held=_header(self.request, "tenant_gate_held"),
            priority=(self.request.delivery_info or {}).get("priority"),
            routing_key=(self.request.delivery_info or {}).get("routing_key"),
        )
        return n

    @tenant_task(app, shared=False, bind=True, name="gateapp.slow")
    def slow(self: Any, context_id: str, n: int, seconds: float = 0.05) -> int:
        started = time.time()
        time.sleep(seconds)  # a task that takes a while, so that others wait behind it
        ran(kind="slow", id=self.request.id, ctx=context_id, n=n, started=started)
        return n

    @tenant_task(app, shared=False, bind=True, name="gateapp.fragile", max_retries=0)
    def fragile(self: Any, context_id: str, n: int) -> int:
        ran(
            kind="fragile",
            id=self.request.id,
            ctx=context_id,
            n=n,
            retries=self.request.retries,
            held=_header(self.request, "tenant_gate_held"),
        )
        return n

    @tenant_task(
        app, shared=False, bind=True, name="gateapp.retrying", max_retries=1, default_retry_delay=0
    )
    def retrying(self: Any, context_id: str, n: int) -> int:
        ran(
            kind="retrying",
            id=self.request.id,
            ctx=context_id,
            n=n,
            retries=self.request.retries,
            routing_key=(self.request.delivery_info or {}).get("routing_key"),
        )
        if self.request.retries == 0:
            raise self.retry()
        return n

    @tenant_task(app, shared=False, name="gateapp.unbound_calls")
    def unbound_calls(context_id: str, n: int) -> int:
        """The same through ``tenant_session`` in a task that is not bound."""
        session = tenant_session(app, context_id)
        for i in range(n):
            session.get(f"v1/Contact/{i + 1}").raise_for_status()
        ran(kind="unbound_calls", ctx=context_id, n=n)
        return n

    @tenant_task(app, shared=False, bind=True, name="gateapp.calls")
    def calls(self: Any, context_id: str, n: int) -> int:
        """*n* calls to the tenant's API with its session (from the first, each run)."""
        session = self.tenant.session
        for i in range(n):
            session.get(f"v1/Contact/{i + 1}").raise_for_status()
        ran(
            kind="calls",
            id=self.request.id,
            ctx=context_id,
            n=n,
            retries=self.request.retries,
            held=_header(self.request, "tenant_gate_held"),
        )
        return n

    @app.task(name="gateapp.plain", shared=False)
    def plain(n: int) -> int:
        ran(kind="plain", n=n)
        return n

    return app


def _record_signals(client: redis.Redis, key: str) -> None:
    def record(name: str) -> Any:
        def receiver(sender: Any = None, signal: Any = None, **fields: Any) -> None:
            client.rpush(key, json.dumps({"signal": name, "pid": os.getpid(), **fields}))

        return receiver

    for name in SIGNALS:
        # One receiver per key, however often the app is made in a process.
        getattr(signals, name).connect(record(name), weak=False, dispatch_uid=f"{key}:{name}")


SIGNALS = (
    "tenant_paused",
    "tenant_resumed",
    "tenant_deleted",
    "tenant_moved",
    "tenant_backup_restored",
    "task_held",
    "task_released",
    "task_dropped",
)


def _header(request: Any, name: str) -> Any:
    value = getattr(request, name, None)
    if value is None:
        value = (request.headers or {}).get(name)
    return value


app = make_app(os.environ)
