"""The settings: every ``tenant_gate_*`` key with its default, meaning and parser,
as the fields of :class:`GateConfig`, and what follows from them. No I/O.

How they are read from ``app.conf`` is :mod:`.reading`; with Django
(``app.config_from_object("django.conf:settings", namespace="CELERY")``) the same keys
are ``CELERY_TENANT_GATE_*`` in ``settings.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from celery_tenant_gate.model.errors import ConfigError
from celery_tenant_gate.model.ids import DEFAULT_TENANT_ID_PATTERN
from celery_tenant_gate.model.states import State
from celery_tenant_gate.model.verdicts import DEFAULT_VERDICTS, Verdict, VerdictPolicy

from . import checks

PREFIX = "tenant_gate_"

#: The name of the control task: the webhook sends it, every installed worker runs it.
CONTROL_TASK = "tenant_gate.control"

#: SuperOffice environments and the host of their State API.
ENVIRONMENTS: Mapping[str, str] = {
    "sod": "sod.superoffice.com",
    "qaonline": "qaonline.superoffice.com",
    "stage": "qaonline.superoffice.com",  # older SuperOffice pages call qaonline "stage"
    "online": "online.superoffice.com",
}


def _setting(parse: checks.Parser, default: Any, doc: str) -> Any:
    metadata = {"doc": doc, "parse": parse}
    if isinstance(default, Mapping):  # a fresh dict: picklable, and no shared default
        return field(default_factory=lambda: dict(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class GateConfig:
    """All settings, typed and checked. Build it with :meth:`from_app` or :meth:`from_mapping`
    (a Celery app's is :func:`~.reading.gate_config`).

    Every field is the setting ``tenant_gate_<field>``.
    """

    redis_url: str | None = _setting(
        checks.redis_url,
        None,
        "Redis for the shared tenant state. Default: the broker URL when it is Redis.",
    )
    key_prefix: str = _setting(checks.text, "tenant_gate", "Prefix of every Redis key and channel.")
    environment: str = _setting(
        checks.one_of(ENVIRONMENTS),
        "online",
        "SuperOffice environment: `sod`, `qaonline` (alias `stage`) or `online`.",
    )
    state_api_url: str | None = _setting(
        checks.url,
        None,
        "Base URL of the State API, the tenant id is appended. "
        "Default: `https://{environment host}/api/state`.",
    )
    state_api_connect_timeout: float = _setting(
        checks.positive, 3.05, "Seconds to connect to the State API."
    )
    state_api_read_timeout: float = _setting(
        checks.positive, 10.0, "Seconds to wait for its answer."
    )
    state_api_retries: int = _setting(
        checks.count, 2, "Retries after a connection error, timeout, 5xx or 429 (0: no retry)."
    )
    state_api_backoff: float = _setting(
        checks.positive, 0.5, "Seconds before the first retry; doubles on each retry."
    )
    state_api_backoff_max: float = _setting(
        checks.positive,
        10.0,
        "Longest wait between retries, including a `Retry-After` the server asks for.",
    )
    min_ttl: float = _setting(
        checks.positive, 5.0, "Shortest time an answer is trusted, whatever `ValidUntil`."
    )
    max_ttl: float = _setting(
        checks.positive, 900.0, "Longest time an answer is trusted, whatever `ValidUntil`."
    )
    error_retry_interval: float = _setting(
        checks.positive,
        10.0,
        "After a failed State API call, seconds before the tenant is asked again.",
    )
    grace_period: float = _setting(
        checks.non_negative,
        300.0,
        "While the State API fails, seconds past its validity that the last known state "
        "is still used.",
    )
    store_outage_grace: float = _setting(
        checks.non_negative,
        60.0,
        "While the store (Redis) cannot be read, seconds a tenant this process last saw "
        "running keeps running; then its tasks wait too, as do those of tenants it never "
        "saw (paused tenants stay paused throughout).",
    )
    failure_policy: Verdict = _setting(
        checks.failure_policy,
        Verdict.HOLD,
        "Verdict when no usable state is known (`hold` or `run`): fail closed by default.",
    )
    verdicts: Mapping[State, Verdict] = _setting(
        checks.verdicts,
        DEFAULT_VERDICTS,
        "Overrides of the verdict per state, e.g. `{'Deleting': 'hold'}`.",
    )
    circuit_failure_threshold: int = _setting(
        checks.count, 5, "Consecutive State API failures that open the circuit breaker (0: never)."
    )
    circuit_reset_timeout: float = _setting(
        checks.positive, 30.0, "Seconds an open circuit refuses calls before one trial call."
    )
    lock_timeout: float = _setting(
        checks.positive, 30.0, "Longest time one process may hold a tenant's look-up lock."
    )
    tenant_id_pattern: str = _setting(
        checks.pattern,
        DEFAULT_TENANT_ID_PATTERN,
        "Regular expression a tenant id must match whole.",
    )
    queue_template: str = _setting(
        checks.queue_template,
        "tenant.{ctx}",
        "Name of a tenant's queue, where its held tasks wait; `{ctx}` is its id.",
    )
    amqp_release_by_broker: bool = _setting(
        checks.flag,
        True,
        "RabbitMQ: release held tasks by dead-lettering, so that the broker moves them "
        "(fast). False: re-publish each one with publisher confirms (slower; no window "
        "should the broker itself crash in the middle of a release).",
    )
    sweep_interval: float = _setting(
        checks.positive,
        2.0,
        "Seconds between sweeps (one worker at a time) that resume tenants whose state "
        "runs again and release or drop what waits in their queues.",
    )
    lock_lease: float = _setting(
        checks.positive,
        2.0,
        "Seconds a release's or a sweep's lock outlives a holder that died (the holder "
        "renews it every third of that): how soon another worker takes over.",
    )
    held_forget_after: float = _setting(
        checks.positive,
        7200.0,
        "Seconds a tenant queue must stay empty after its last hold or release before "
        "sweeps stop looking at it; longer than the broker's visibility timeout, so that "
        "released tasks a broker puts back are found and released again.",
    )
    dead_letter_max: int = _setting(
        checks.count, 10_000, "Most dropped tasks kept per tenant (the count is kept in full)."
    )
    control_queue: str = _setting(
        checks.text,
        "tenant_gate.control",
        "Queue of the control task that the webhook sends; every worker of an installed "
        "app consumes it. Never a tenant queue, never gated.",
    )
    webhook_min_pause: float = _setting(
        checks.non_negative,
        120.0,
        "After an Upgrade or Suspend notification, seconds before the tenant may resume by "
        "itself (the State API may still say Running when the notification comes).",
    )
    delete_confirm_timeout: float = _setting(
        checks.non_negative,
        900.0,
        "After a Delete notification, seconds the tenant stays paused waiting for the State "
        "API to confirm it; then a warning is logged and the tenant follows its state. Work "
        "is dropped only when the State API says Deleted, Deleting or DeleteFailed.",
    )
    webhook_jwks_url: str | None = _setting(
        checks.url,
        None,
        "JWKS with SuperOffice's signing keys. Default: "
        "`https://{environment host}/login/.well-known/jwks` unless a public key is set.",
    )
    webhook_public_key: str | None = _setting(
        checks.text,
        None,
        "PEM public key or certificate to verify notification tokens with, instead of JWKS.",
    )
    webhook_issuer: str | None = _setting(
        checks.text,
        None,
        "Expected `iss` of notification tokens. Default: `https://{environment host}`.",
    )
    webhook_audience: str | None = _setting(
        checks.text, None, "Expected `aud` of notification tokens; not checked when unset."
    )
    webhook_leeway: float = _setting(
        checks.non_negative, 60.0, "Seconds of clock skew allowed on `exp`, `nbf` and `iat`."
    )
    webhook_tokens_without_tenant: bool = _setting(
        checks.flag,
        False,
        "Accept notification tokens that carry no tenant claim "
        "(`http://schemes.superoffice.net/identity/ctx`) for the tenant the body names. "
        "Set it only if SuperOffice's tokens for your app carry none (undocumented); a "
        "token that carries one must always name the body's tenant.",
    )
    webhook_jwks_refresh: float = _setting(
        checks.positive,
        300.0,
        "Seconds between the background fetches of the JWKS (an unknown `kid` asks for "
        "one sooner, at most every 10 s).",
    )
    webhook_jwks_allow_http: bool = _setting(
        checks.flag,
        False,
        "Tests only: accept an `http://` JWKS URL (the JWKS must otherwise be https: "
        "keys fetched over plain HTTP can be swapped on the way).",
    )
    webhook_max_body: int = _setting(
        checks.count, 65_536, "Largest notification body accepted, in bytes."
    )
    local_cache_size: int = _setting(
        checks.count, 100_000, "Most tenants each process keeps in its in-memory cache."
    )
    metrics: bool = _setting(
        checks.flag,
        False,
        "Prometheus metrics (`tenant_gate_*`) in every process of the app; needs "
        "`pip install 'celery-tenant-gate[prometheus]'`. See Signals, logs and metrics.",
    )
    metrics_port: int | None = _setting(
        checks.port,
        None,
        "Port on which each worker serves `/metrics` (from its main process; with "
        "prefork, set `PROMETHEUS_MULTIPROC_DIR` so that pool processes are counted). "
        "Unset: not served (expose prometheus_client's registry yourself).",
    )
    metrics_address: str = _setting(
        checks.text,
        "0.0.0.0",  # noqa: S104 -- Prometheus scrapes from another host
        "Address the worker's `/metrics` server listens on.",
    )

    @property
    def state_api_base(self) -> str:
        """The State API base URL, without a trailing slash."""
        if self.state_api_url:
            return self.state_api_url.rstrip("/")
        return f"https://{ENVIRONMENTS[self.environment]}/api/state"

    @property
    def environment_host(self) -> str:
        return ENVIRONMENTS[self.environment]

    @property
    def token_issuer(self) -> str:
        """The issuer notification tokens must name."""
        return self.webhook_issuer or f"https://{self.environment_host}"

    @property
    def jwks_url(self) -> str | None:
        """Where SuperOffice's signing keys are, unless a public key is configured."""
        if self.webhook_jwks_url:
            return self.webhook_jwks_url
        if self.webhook_public_key:
            return None
        return f"https://{self.environment_host}/login/.well-known/jwks"

    @property
    def policy(self) -> VerdictPolicy:
        return VerdictPolicy(
            verdicts=self.verdicts,
            failure_verdict=self.failure_policy,
            grace_period=self.grace_period,
        )

    @classmethod
    def from_mapping(
        cls, values: Mapping[str, Any], *, broker_url: str | None = None
    ) -> GateConfig:
        """Build from ``tenant_gate_*`` keys (other keys are ignored).

        Raises :class:`ConfigError` naming the first key with a bad value, or an
        unknown ``tenant_gate_*`` key (most likely a typo: the closest setting is named).
        """
        parsers = {f.name: f.metadata["parse"] for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            if not key.startswith(PREFIX) or value is None:
                continue
            name = key[len(PREFIX) :]
            if name not in parsers:
                close = checks.closest(name, parsers)
                hint = f"; did you mean {PREFIX + close!r}?" if close else ""
                raise ConfigError(f"unknown setting {key!r}{hint}")
            kwargs[name] = parsers[name](key, value)
        if "redis_url" not in kwargs and broker_url and checks.is_redis_url(broker_url):
            kwargs["redis_url"] = broker_url
        config = cls(**kwargs)
        if config.metrics_port is not None and not config.metrics:
            raise ConfigError(
                f"{PREFIX}metrics_port is set but {PREFIX}metrics is off: "
                f"set {PREFIX}metrics = True to serve metrics"
            )
        if config.min_ttl > config.max_ttl:
            raise ConfigError(
                f"{PREFIX}min_ttl ({config.min_ttl}) must not exceed {PREFIX}max_ttl "
                f"({config.max_ttl})"
            )
        return config

    @classmethod
    def from_app(cls, app: Any) -> GateConfig:
        """Build from a Celery app's configuration (see :func:`.reading.read_config`)."""
        from .reading import read_config  # noqa: PLC0415 -- reading builds on this module

        return read_config(app)

    def require_redis_url(self) -> str:
        if not self.redis_url:
            raise ConfigError(
                f"{PREFIX}redis_url is not set and the broker is not Redis: "
                "set it to the Redis that keeps the shared tenant state"
            )
        return self.redis_url


def settings_doc() -> list[tuple[str, str, str]]:
    """(key, default, meaning) for every setting: the README's settings table."""
    rows = []
    for f in fields(GateConfig):
        default = f.default
        shown = repr(default.value if isinstance(default, Verdict) else default)
        if f.name == "verdicts":
            shown = "{} (the verdict table)"
        rows.append((PREFIX + f.name, shown, f.metadata["doc"]))
    return rows
