"""Per-app singletons: the config, the tenant state look-up and the gate, cached on the
Celery app (as celery-redbeat does), so that tests and users can swap them."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis

from celery_tenant_gate.config.reading import built_from_settings, gate_config
from celery_tenant_gate.gate.gate import Gate
from celery_tenant_gate.gate.lookup import TenantStates
from celery_tenant_gate.io import metrics
from celery_tenant_gate.io.broker.amqp_held import AmqpHeldQueues
from celery_tenant_gate.io.broker.redis_held import RedisHeldQueues
from celery_tenant_gate.io.store.deadletters import DeadLetters
from celery_tenant_gate.model.errors import ConfigError
from celery_tenant_gate.model.held import HeldQueues
from celery_tenant_gate.observe.watch import watch

__all__ = ["gate_config", "gate_for", "held_queues_for", "tenant_states"]

T = TypeVar("T")
_lock = threading.RLock()  # the makers call each other


def _cached(app: Any, attr: str, make: Callable[[Any], T]) -> T:
    """``app.<attr>``, made by ``make(app)`` on first use. The makers are module-level
    functions: the gate is asked for once per tenant task, so no closure per call."""
    value: T | None = getattr(app, attr, None)
    if value is None:
        with _lock:
            value = getattr(app, attr, None)
            if value is None:
                value = make(app)
                setattr(app, attr, value)
    return value


def tenant_states(app: Any) -> TenantStates:
    """The app's :class:`TenantStates` (created on first use, one per process)."""
    return _cached(app, "_tenant_gate_states", _make_states)


def _make_states(app: Any) -> TenantStates:
    config = gate_config(app)
    if config.metrics:
        metrics.enable()  # State API calls are counted from now on
    states = TenantStates.from_config(config)
    built_from_settings(app, "the tenant look-up")
    return states


def gate_for(app: Any) -> Gate:
    """The app's :class:`Gate` (created on first use, one per process)."""
    return _cached(app, "_tenant_gate", _make_gate)


def _make_gate(app: Any) -> Gate:
    config = gate_config(app)
    states = tenant_states(app)
    gate = Gate(
        app,
        config,
        states,
        held_queues_for(app),
        DeadLetters(states.store.client, config.key_prefix, config.dead_letter_max),
    )
    watch(gate)
    built_from_settings(app, "the gate")
    return gate


def held_queues_for(app: Any) -> HeldQueues:
    """The tenant queues on the app's broker (Redis or RabbitMQ)."""
    url = app.connection_for_write().as_uri(include_password=True)
    scheme = urlsplit(url).scheme
    default_queue = app.conf.task_default_queue or "celery"
    if scheme in {"redis", "rediss"}:
        config = gate_config(app)
        # A message a release refuses (a route that leads nowhere sane) is dead-lettered.
        store = tenant_states(app).store.client
        return RedisHeldQueues(
            redis.Redis.from_url(url),
            default_queue,
            queue_template=config.queue_template,
            dead_letters=DeadLetters(store, config.key_prefix, config.dead_letter_max),
        )
    if scheme in {"amqp", "amqps", "pyamqp"}:
        return AmqpHeldQueues(
            app.connection_for_write, dead_letter=gate_config(app).amqp_release_by_broker
        )
    raise ConfigError(
        f"tenant-gate holds tasks in broker queues and supports Redis and RabbitMQ "
        f"brokers; broker_url is {scheme}://"
    )
