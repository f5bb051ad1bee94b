"""Parsers of setting values: each takes the key (for its message) and the raw value,
and returns the typed value or raises :class:`ConfigError` naming the key. No I/O."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Collection, Mapping
from typing import Any
from urllib.parse import urlsplit

from celery_tenant_gate.model.errors import ConfigError
from celery_tenant_gate.model.states import State
from celery_tenant_gate.model.verdicts import DEFAULT_VERDICTS, Verdict

#: ``parse(key, raw value) -> typed value``.
Parser = Callable[[str, Any], Any]


def closest(name: str, names: Collection[str]) -> str | None:
    """The one of *names* closest to *name* (a typo of it?), or None when none is close."""
    found = difflib.get_close_matches(name, list(names), n=1, cutoff=0.5)
    return found[0] if found else None


def is_redis_url(url: str) -> bool:
    return urlsplit(url).scheme in {"redis", "rediss", "unix", "redis+socket"}


def positive(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{key} must be a number of seconds, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{key} must be a number of seconds, got {value!r}") from None
    if not number > 0 or number == float("inf"):
        raise ConfigError(f"{key} must be a positive number of seconds, got {value!r}")
    return number


def non_negative(key: str, value: Any) -> float:
    if value in (0, "0"):
        return 0.0
    return positive(key, value)


def count(key: str, value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be a whole number, got {value!r}") from None
    if isinstance(value, (bool, float)) or number < 0:
        raise ConfigError(f"{key} must be a whole number >= 0, got {value!r}")
    return number


def flag(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if isinstance(value, (str, int)) else None
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{key} must be True or False, got {value!r}")


def port(key: str, value: Any) -> int:
    number = count(key, value)
    if not 1 <= number <= 65535:
        raise ConfigError(f"{key} must be a TCP port (1 to 65535), got {value!r}")
    return number


def text(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key} must be a non-empty string, got {value!r}")
    return value


def url(key: str, value: Any) -> str:
    checked = text(key, value)
    parts = urlsplit(checked)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ConfigError(f"{key} must be an http(s) URL, got {value!r}")
    return checked


def redis_url(key: str, value: Any) -> str:
    checked = text(key, value)
    if not is_redis_url(checked):
        raise ConfigError(f"{key} must be a redis://, rediss:// or unix:// URL, got {value!r}")
    return checked


def one_of(choices: Collection[str]) -> Parser:
    """A parser that accepts one of *choices*."""

    def parse(key: str, value: Any) -> str:
        if value not in choices:
            raise ConfigError(f"{key} must be one of {sorted(choices)}, got {value!r}")
        return str(value)

    return parse


def verdict(key: str, value: Any, allowed: tuple[Verdict, ...] = tuple(Verdict)) -> Verdict:
    try:
        parsed = Verdict(str(value.value if isinstance(value, Verdict) else value).lower())
    except ValueError:
        parsed = None
    if parsed not in allowed:
        names = ", ".join(v.value for v in allowed)
        raise ConfigError(f"{key} must be one of {names}, got {value!r}")
    assert parsed is not None
    return parsed


def failure_policy(key: str, value: Any) -> Verdict:
    return verdict(key, value, (Verdict.HOLD, Verdict.RUN))


def verdicts(key: str, value: Any) -> Mapping[State, Verdict]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key} must be a mapping of state name to verdict, got {value!r}")
    table = dict(DEFAULT_VERDICTS)
    for name, given in value.items():
        state = name if isinstance(name, State) else State.parse(name)
        if state is State.UNRECOGNISED and str(name).casefold() != "unrecognised":
            raise ConfigError(f"{key}: unknown state {name!r}")
        table[state] = verdict(f"{key}[{name!r}]", given)
    return table


def queue_template(key: str, value: Any) -> str:
    checked = text(key, value)
    if "{ctx}" not in checked:
        raise ConfigError(f"{key} must contain {{ctx}}, got {value!r}")
    try:
        name = checked.format(ctx="Cust1")
    except (IndexError, KeyError, ValueError):
        raise ConfigError(f"{key} may contain no field but {{ctx}}, got {value!r}") from None
    if not re.fullmatch(r"[A-Za-z0-9_.:-]+", name):
        raise ConfigError(f"{key} must make queue names of letters, digits, _ . : -; got {value!r}")
    return checked


def pattern(key: str, value: Any) -> str:
    checked = text(key, value)
    try:
        re.compile(checked)
    except re.error as exc:
        raise ConfigError(f"{key} is not a valid regular expression: {exc}") from None
    return checked
