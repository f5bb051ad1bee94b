"""The vendor app's configuration, from environment variables (twelve-factor style).

=============================  =======================================================
``VENDORAPP_BROKER_URL``       Celery broker (``redis://`` or ``amqp://``).
                               Default ``redis://127.0.0.1:6379/0``.
``VENDORAPP_REDIS_URL``        Redis for the gate's shared tenant state and the activity
                               log. Default: the broker URL when it is Redis.
``VENDORAPP_NAMESPACE``        Prefix of every Redis key and queue name of this app,
                               so that several copies can share one Redis and broker.
                               Default ``vendorapp``.
``VENDORAPP_TENANT_API_VIA``   Send the tenants' API calls to this base URL instead of
                               ``https://{host}/...`` (``{via}/{host}/...``): a local
                               stand-in for tests and the demo. Unset in production.
``VENDORAPP_WEB_HOST``         Where ``python -m example_project.vendorapp.web`` listens.
``VENDORAPP_WEB_PORT``         Default ``127.0.0.1`` and ``8000`` (0: any free port).
``VENDORAPP_GATE_<NAME>``      Any celery-tenant-gate setting ``tenant_gate_<name>``,
                               e.g. ``VENDORAPP_GATE_ENVIRONMENT=sod`` (the gate checks
                               it, and names the key when a value or a name is wrong).
=============================  =======================================================

This module imports neither Celery nor the gate: the web app and the worker both
build their Celery configuration from :meth:`Settings.celery_conf`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

ENV_PREFIX = "VENDORAPP_"
BROKER_SCHEMES = {"redis", "rediss", "amqp", "amqps", "pyamqp"}
#: Variables ``VENDORAPP_GATE_<NAME>`` set the gate's ``tenant_gate_<name>``.
GATE_ENV_PREFIX = "VENDORAPP_GATE_"


class SettingsError(ValueError):
    """An environment variable has a value the app cannot use; the message names it."""


@dataclass(frozen=True)
class Settings:
    broker_url: str = "redis://127.0.0.1:6379/0"
    redis_url: str = "redis://127.0.0.1:6379/0"
    namespace: str = "vendorapp"
    tenant_api_via: str | None = None
    web_host: str = "127.0.0.1"
    web_port: int = 8000
    #: ``tenant_gate_*`` settings given as ``VENDORAPP_GATE_*`` variables.
    gate: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from *env* (default: ``os.environ``)."""
        env = os.environ if env is None else env
        broker = _url(env, "BROKER_URL", cls.broker_url, BROKER_SCHEMES)
        redis_default = broker if urlsplit(broker).scheme.startswith("redis") else cls.redis_url
        namespace = env.get(ENV_PREFIX + "NAMESPACE", cls.namespace)
        if not namespace or not all(c.isalnum() or c in "-_" for c in namespace):
            raise SettingsError(
                f"{ENV_PREFIX}NAMESPACE must be letters, digits, '-' or '_', got {namespace!r}"
            )
        via = env.get(ENV_PREFIX + "TENANT_API_VIA") or None
        if via is not None:
            via = _url(env, "TENANT_API_VIA", "", {"http", "https"})
        return cls(
            broker_url=broker,
            redis_url=_url(env, "REDIS_URL", redis_default, {"redis", "rediss"}),
            namespace=namespace,
            tenant_api_via=via,
            web_host=env.get(ENV_PREFIX + "WEB_HOST", cls.web_host),
            web_port=_port(env, "WEB_PORT", cls.web_port),
            gate={
                "tenant_gate_" + name[len(GATE_ENV_PREFIX) :].lower(): value
                for name, value in env.items()
                if name.startswith(GATE_ENV_PREFIX) and value != ""
            },
        )

    def to_env(self) -> dict[str, str]:
        """The environment variables that give these settings (for subprocesses)."""
        env = {
            ENV_PREFIX + "BROKER_URL": self.broker_url,
            ENV_PREFIX + "REDIS_URL": self.redis_url,
            ENV_PREFIX + "NAMESPACE": self.namespace,
            ENV_PREFIX + "WEB_HOST": self.web_host,
            ENV_PREFIX + "WEB_PORT": str(self.web_port),
        }
        if self.tenant_api_via:
            env[ENV_PREFIX + "TENANT_API_VIA"] = self.tenant_api_via
        for key, value in self.gate.items():
            env[GATE_ENV_PREFIX + key[len("tenant_gate_") :].upper()] = str(value)
        return env

    @property
    def task_queue(self) -> str:
        return f"{self.namespace}.tasks"

    @property
    def activity_key(self) -> str:
        """The Redis stream of the activity log (see ``vendorapp.activity``)."""
        return f"{self.namespace}:activity"

    def celery_conf(self) -> dict[str, Any]:
        """The Celery configuration of the app: the same for the worker and the web app."""
        return {
            "broker_url": self.broker_url,
            "broker_connection_retry_on_startup": True,
            "task_default_queue": self.task_queue,
            # At-least-once: a task's message is acknowledged after its body ran, so a
            # worker that dies mid-task loses nothing (the gate's README says why).
            "task_acks_late": True,
            "worker_prefetch_multiplier": 1,
            "task_ignore_result": True,
            "tenant_gate_redis_url": self.redis_url,
            "tenant_gate_key_prefix": f"{self.namespace}:gate",
            "tenant_gate_queue_template": self.namespace + ".tenant.{ctx}",
            "tenant_gate_control_queue": f"{self.namespace}.control",
            **self.gate,
        }


def _url(env: Mapping[str, str], name: str, default: str, schemes: set[str]) -> str:
    value = env.get(ENV_PREFIX + name) or default
    parts = urlsplit(value)
    if parts.scheme not in schemes or not parts.netloc:
        raise SettingsError(
            f"{ENV_PREFIX}{name} must be a URL starting with one of "
            f"{', '.join(sorted(s + '://' for s in schemes))}; got {value!r}"
        )
    return value


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(ENV_PREFIX + name)
    if value is None or value == "":
        return default
    if not value.isdigit() or int(value) > 65535:
        raise SettingsError(f"{ENV_PREFIX}{name} must be a port number (0-65535), got {value!r}")
    return int(value)
