"""Settings: ``tenant_gate_*`` keys in ``app.conf``, read once into a :class:`GateConfig`.

With Django (``app.config_from_object("django.conf:settings", namespace="CELERY")``)
the same keys are ``CELERY_TENANT_GATE_*`` in ``settings.py``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit

from celery_tenant_gate.model.errors import ConfigError
from celery_tenant_gate.model.ids import DEFAULT_TENANT_ID_PATTERN
from celery_tenant_gate.model.states import State
from celery_tenant_gate.model.verdicts import DEFAULT_VERDICTS, Verdict, VerdictPolicy

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


def _setting(default: Any, doc: str) -> Any:
    if isinstance(default, Mapping):  # a fresh dict: picklable, and no shared default
        return field(default_factory=lambda: dict(default), metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class GateConfig:
    """All settings, typed and checked. Build it with :meth:`from_app` or :meth:`from_mapping`.

    Every field is the setting ``tenant_gate_<field>``.
    """

    redis_url: str | None = _setting(
        None, "Redis for the shared tenant state. Default: the broker URL when it is Redis."
    )
    key_prefix: str = _setting("tenant_gate", "Prefix of every Redis key and channel.")
    environment: str = _setting(
        "online", "SuperOffice environment: `sod`, `qaonline` (alias `stage`) or `online`."
    )
    state_api_url: str | None = _setting(
        None,
        "Base URL of the State API, the tenant id is appended. "
        "Default: `https://{environment host}/api/state`.",
    )
    state_api_connect_timeout: float = _setting(3.05, "Seconds to connect to the State API.")
    state_api_read_timeout: float = _setting(10.0, "Seconds to wait for its answer.")
    state_api_retries: int = _setting(
        2, "Retries after a connection error, timeout, 5xx or 429 (0: no retry)."
    )
    state_api_backoff: float = _setting(
        0.5, "Seconds before the first retry; doubles on each retry."
    )
    state_api_backoff_max: float = _setting(
        10.0, "Longest wait between retries, including a `Retry-After` the server asks for."
    )
    min_ttl: float = _setting(5.0, "Shortest time an answer is trusted, whatever `ValidUntil`.")
    max_ttl: float = _setting(900.0, "Longest time an answer is trusted, whatever `ValidUntil`.")
    error_retry_interval: float = _setting(
        10.0, "After a failed State API call, seconds before the tenant is asked again."
    )
    grace_period: float = _setting(
        300.0,
        "While the State API fails, seconds past its validity that the last known state "
        "is still used.",
    )
    failure_policy: Verdict = _setting(
        Verdict.HOLD,
        "Verdict when no usable state is known (`hold` or `run`): fail closed by default.",
    )
    verdicts: Mapping[State, Verdict] = _setting(
        DEFAULT_VERDICTS,
        "Overrides of the verdict per state, e.g. `{'Deleting': 'hold'}`.",
    )
    circuit_failure_threshold: int = _setting(
        5, "Consecutive State API failures that open the circuit breaker (0: never)."
    )
    circuit_reset_timeout: float = _setting(
        30.0, "Seconds an open circuit refuses calls before one trial call."
    )
    lock_timeout: float = _setting(
        30.0, "Longest time one process may hold a tenant's look-up lock."
    )
    tenant_id_pattern: str = _setting(
        DEFAULT_TENANT_ID_PATTERN, "Regular expression a tenant id must match whole."
    )
    queue_template: str = _setting(
        "tenant.{ctx}", "Name of a tenant's queue, where its held tasks wait; `{ctx}` is its id."
    )
    amqp_release_by_broker: bool = _setting(
        True,
        "RabbitMQ: release held tasks by dead-lettering, so that the broker moves them "
        "(fast). False: re-publish each one with publisher confirms (slower; no window "
        "should the broker itself crash in the middle of a release).",
    )
    sweep_interval: float = _setting(
        2.0,
        "Seconds between sweeps (one worker at a time) that resume tenants whose state "
        "runs again and release or drop what waits in their queues.",
    )
    held_forget_after: float = _setting(
        7200.0,
        "Seconds a tenant queue must stay empty after its last hold or release before "
        "sweeps stop looking at it; longer than the broker's visibility timeout, so that "
        "released tasks a broker puts back are found and released again.",
    )
    dead_letter_max: int = _setting(
        10_000, "Most dropped tasks kept per tenant (the count is kept in full)."
    )
    control_queue: str = _setting(
        "tenant_gate.control",
        "Queue of the control task that the webhook sends; every worker of an installed "
        "app consumes it. Never a tenant queue, never gated.",
    )
    webhook_min_pause: float = _setting(
        120.0,
        "After an Upgrade or Suspend notification, seconds before the tenant may resume by "
        "itself (the State API may still say Running when the notification comes).",
    )
    delete_confirm_timeout: float = _setting(
        900.0,
        "After a Delete notification, seconds to wait for the State API to confirm it "
        "before the tenant's work is dropped anyway.",
    )
    webhook_jwks_url: str | None = _setting(
        None,
        "JWKS with SuperOffice's signing keys. Default: "
        "`https://{environment host}/login/.well-known/jwks` unless a public key is set.",
    )
    webhook_public_key: str | None = _setting(
        None, "PEM public key or certificate to verify notification tokens with, instead of JWKS."
    )
    webhook_issuer: str | None = _setting(
        None, "Expected `iss` of notification tokens. Default: `https://{environment host}`."
    )
    webhook_audience: str | None = _setting(
        None, "Expected `aud` of notification tokens; not checked when unset."
    )
    webhook_leeway: float = _setting(60.0, "Seconds of clock skew allowed on `exp` and `nbf`.")
    webhook_max_body: int = _setting(65_536, "Largest notification body accepted, in bytes.")
    local_cache_size: int = _setting(
        100_000, "Most tenants each process keeps in its in-memory cache."
    )
    metrics: bool = _setting(
        False,
        "Prometheus metrics (`tenant_gate_*`) in every process of the app; needs "
        "`pip install 'celery-tenant-gate[prometheus]'`. See Signals, logs and metrics.",
    )
    metrics_port: int | None = _setting(
        None,
        "Port on which each worker serves `/metrics` (from its main process; with "
        "prefork, set `PROMETHEUS_MULTIPROC_DIR` so that pool processes are counted). "
        "Unset: not served (expose prometheus_client's registry yourself).",
    )
    metrics_address: str = _setting(
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
        unknown ``tenant_gate_*`` key (most likely a typo).
        """
        known = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            if not key.startswith(PREFIX) or value is None:
                continue
            name = key[len(PREFIX) :]
            if name not in known:
                raise ConfigError(f"unknown setting {key!r}")
            kwargs[name] = _PARSERS[name](key, value)
        if "redis_url" not in kwargs and broker_url and _is_redis_url(broker_url):
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
        """Build from a Celery app's configuration."""
        conf = app.conf
        values = {key: conf.get(key) for key in conf if str(key).startswith(PREFIX)}
        # Keys set with a namespace (Django's CELERY_TENANT_GATE_*) are only found by get().
        for f in fields(cls):
            value = conf.get(PREFIX + f.name)
            if value is not None:
                values[PREFIX + f.name] = value
        broker = conf.get("broker_url")
        return cls.from_mapping(values, broker_url=broker if isinstance(broker, str) else None)

    def require_redis_url(self) -> str:
        if not self.redis_url:
            raise ConfigError(
                f"{PREFIX}redis_url is not set and the broker is not Redis: "
                "set it to the Redis that keeps the shared tenant state"
            )
        return self.redis_url


def gate_config(app: Any) -> GateConfig:
    """The app's :class:`GateConfig`, read from ``app.conf`` once and cached on the app
    (set ``app._tenant_gate_config`` to swap it in tests)."""
    config: GateConfig | None = getattr(app, "_tenant_gate_config", None)
    if config is None:
        config = GateConfig.from_app(app)
        app._tenant_gate_config = config
    return config


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


def _is_redis_url(url: str) -> bool:
    return urlsplit(url).scheme in {"redis", "rediss", "unix", "redis+socket"}


def _positive(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{key} must be a number of seconds, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{key} must be a number of seconds, got {value!r}") from None
    if not number > 0 or number == float("inf"):
        raise ConfigError(f"{key} must be a positive number of seconds, got {value!r}")
    return number


def _non_negative(key: str, value: Any) -> float:
    if value in (0, "0"):
        return 0.0
    return _positive(key, value)


def _count(key: str, value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be a whole number, got {value!r}") from None
    if isinstance(value, (bool, float)) or number < 0:
        raise ConfigError(f"{key} must be a whole number >= 0, got {value!r}")
    return number


def _flag(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if isinstance(value, (str, int)) else None
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{key} must be True or False, got {value!r}")


def _port(key: str, value: Any) -> int:
    number = _count(key, value)
    if not 1 <= number <= 65535:
        raise ConfigError(f"{key} must be a TCP port (1 to 65535), got {value!r}")
    return number


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key} must be a non-empty string, got {value!r}")
    return value


def _url(key: str, value: Any) -> str:
    text = _text(key, value)
    parts = urlsplit(text)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ConfigError(f"{key} must be an http(s) URL, got {value!r}")
    return text


def _redis_url(key: str, value: Any) -> str:
    text = _text(key, value)
    if not _is_redis_url(text):
        raise ConfigError(f"{key} must be a redis://, rediss:// or unix:// URL, got {value!r}")
    return text


def _environment(key: str, value: Any) -> str:
    if value not in ENVIRONMENTS:
        raise ConfigError(f"{key} must be one of {sorted(ENVIRONMENTS)}, got {value!r}")
    return str(value)


def _verdict(key: str, value: Any, allowed: tuple[Verdict, ...] = tuple(Verdict)) -> Verdict:
    try:
        verdict = Verdict(str(value.value if isinstance(value, Verdict) else value).lower())
    except ValueError:
        verdict = None
    if verdict not in allowed:
        names = ", ".join(v.value for v in allowed)
        raise ConfigError(f"{key} must be one of {names}, got {value!r}")
    assert verdict is not None
    return verdict


def _failure_policy(key: str, value: Any) -> Verdict:
    return _verdict(key, value, (Verdict.HOLD, Verdict.RUN))


def _verdicts(key: str, value: Any) -> Mapping[State, Verdict]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key} must be a mapping of state name to verdict, got {value!r}")
    table = dict(DEFAULT_VERDICTS)
    for name, verdict in value.items():
        state = name if isinstance(name, State) else State.parse(name)
        if state is State.UNRECOGNISED and str(name).casefold() != "unrecognised":
            raise ConfigError(f"{key}: unknown state {name!r}")
        table[state] = _verdict(f"{key}[{name!r}]", verdict)
    return table


def _queue_template(key: str, value: Any) -> str:
    text = _text(key, value)
    if "{ctx}" not in text:
        raise ConfigError(f"{key} must contain {{ctx}}, got {value!r}")
    try:
        name = text.format(ctx="Cust1")
    except (IndexError, KeyError, ValueError):
        raise ConfigError(f"{key} may contain no field but {{ctx}}, got {value!r}") from None
    if not re.fullmatch(r"[A-Za-z0-9_.:-]+", name):
        raise ConfigError(f"{key} must make queue names of letters, digits, _ . : -; got {value!r}")
    return text


def _pattern(key: str, value: Any) -> str:
    text = _text(key, value)
    try:
        re.compile(text)
    except re.error as exc:
        raise ConfigError(f"{key} is not a valid regular expression: {exc}") from None
    return text


_PARSERS: dict[str, Callable[[str, Any], Any]] = {
    "redis_url": _redis_url,
    "key_prefix": _text,
    "environment": _environment,
    "state_api_url": _url,
    "state_api_connect_timeout": _positive,
    "state_api_read_timeout": _positive,
    "state_api_retries": _count,
    "state_api_backoff": _positive,
    "state_api_backoff_max": _positive,
    "min_ttl": _positive,
    "max_ttl": _positive,
    "error_retry_interval": _positive,
    "grace_period": _non_negative,
    "failure_policy": _failure_policy,
    "verdicts": _verdicts,
    "circuit_failure_threshold": _count,
    "circuit_reset_timeout": _positive,
    "lock_timeout": _positive,
    "tenant_id_pattern": _pattern,
    "local_cache_size": _count,
    "control_queue": _text,
    "webhook_min_pause": _non_negative,
    "delete_confirm_timeout": _non_negative,
    "webhook_jwks_url": _url,
    "webhook_public_key": _text,
    "webhook_issuer": _text,
    "webhook_audience": _text,
    "webhook_leeway": _non_negative,
    "webhook_max_body": _count,
    "queue_template": _queue_template,
    "amqp_release_by_broker": _flag,
    "sweep_interval": _positive,
    "dead_letter_max": _count,
    "held_forget_after": _positive,
    "metrics": _flag,
    "metrics_port": _port,
    "metrics_address": _text,
}
