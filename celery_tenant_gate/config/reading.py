"""From a Celery app's ``app.conf`` to its :class:`GateConfig`: reading the
``tenant_gate_*`` keys (also in their Django form, ``CELERY_TENANT_GATE_*``), warning
about unknown ones, caching the result on the app, and noticing a setting changed after
it was read. No I/O, no Celery import: ``app.conf`` is used as a mapping.

A setting changed in ``app.conf`` after it was read is never silently ignored: each
call of :func:`gate_config` reads ``app.conf`` again; while nothing was built from the
config, the change takes effect; once something was (the gate, the webhook receiver,
see :func:`built_from_settings`), it raises :class:`ConfigError` naming the changed keys.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Any

from celery_tenant_gate.model.errors import ConfigError

from . import checks
from .settings import PREFIX, GateConfig

_lock = threading.RLock()  # gate_config may run Celery's on_configure, which may call it


class UnknownSettingWarning(UserWarning):
    """A ``tenant_gate_*`` key in ``app.conf`` that is no setting (most likely a typo).
    It is ignored. Make it an error with
    ``warnings.simplefilter("error", UnknownSettingWarning)``."""


def read_config(app: Any, *, warned: set[str] | None = None) -> GateConfig:
    """Build a :class:`GateConfig` from ``app.conf`` now (not cached).

    Raises :class:`ConfigError` naming the first key with a bad value. Warns with
    :class:`UnknownSettingWarning` about each unknown ``tenant_gate_*`` key, naming the
    closest setting; keys in *warned* are not warned about again (and are added to it).
    """
    conf = app.conf
    # Known keys are read with get(), as Celery reads its own: that finds them with the
    # namespace (Django's CELERY_TENANT_GATE_*) too. The first get() also makes a
    # lazily configured app (config_from_object) load its configuration.
    known = [f.name for f in fields(GateConfig)]
    values = {PREFIX + name: conf.get(PREFIX + name) for name in known}
    for key, hint in _unknown_keys(conf, known):
        if warned is None or key not in warned:
            message = f"{key} is not a celery-tenant-gate setting and is ignored"
            warnings.warn(
                message + (f"; did you mean {hint}?" if hint else ""),
                UnknownSettingWarning,
                stacklevel=2,
            )
            if warned is not None:
                warned.add(key)
    broker = conf.get("broker_url")
    return GateConfig.from_mapping(values, broker_url=broker if isinstance(broker, str) else None)


def _unknown_keys(conf: Any, known: list[str]) -> Iterator[tuple[str, str | None]]:
    """Each key of *conf* meant for us that Celery does not read as a setting, with the
    closest key it would read (in the same form: with the namespace or without)."""
    namespace = getattr(conf, "prefix", None) or ""  # "CELERY_" with namespace="CELERY"
    ours = PREFIX.lower()
    spaced = (namespace + PREFIX).lower()
    for key in list(conf):
        if not isinstance(key, str):
            continue
        lowered = key.lower()
        if namespace and lowered.startswith(spaced):
            name = lowered[len(spaced) :]
            # Celery matches the namespace's case: CELERY_ reads CELERY_TENANT_GATE_*.
            form = str.upper if namespace.isupper() else str.lower
            if name in known and key == form(namespace + PREFIX + name):
                continue
            close = checks.closest(name, known)
            yield key, form(namespace + PREFIX + close) if close else None
        elif lowered.startswith(ours):
            name = lowered[len(ours) :]
            if name in known and key == PREFIX + name:
                continue
            close = checks.closest(name, known)
            yield key, PREFIX + close if close else None


@dataclass
class _Reading:
    """What an app's settings were read into, and what was built from that."""

    #: The config last read from ``app.conf`` (None before the first read).
    config: GateConfig | None = None
    #: What was built from it ("the gate", "the webhook receiver", ...).
    users: list[str] = field(default_factory=list)
    #: Unknown keys already warned about.
    warned: set[str] = field(default_factory=set)


def _reading_of(app: Any) -> _Reading:
    reading: _Reading | None = getattr(app, "_tenant_gate_reading", None)
    if reading is None:
        reading = _Reading()
        app._tenant_gate_reading = reading
    return reading


def gate_config(app: Any) -> GateConfig:
    """The app's :class:`GateConfig`, read from ``app.conf`` and cached on the app as
    ``app._tenant_gate_config`` (set that to swap the config in tests: it is then used
    as it is).

    Each call reads ``app.conf`` again (call it where settings are taken, not per task)
    and compares. A changed setting takes effect while nothing was built from the
    config; once something was (:func:`built_from_settings`), it raises :class:`ConfigError`
    naming each changed key. A bad value raises :class:`ConfigError` naming the key.
    """
    with _lock:
        reading = _reading_of(app)
        cached: GateConfig | None = getattr(app, "_tenant_gate_config", None)
        if cached is not None and cached is not reading.config:
            return cached  # swapped in by hand
        config = read_config(app, warned=reading.warned)
        if cached is not None and config == cached:
            return cached
        if cached is not None and reading.users:
            changed = ", ".join(_changed_keys(cached, config))
            raise ConfigError(
                f"{changed} changed in app.conf after the settings were used to build "
                f"{', '.join(reading.users)}; the change would be ignored: set the "
                f"{PREFIX}* settings before install(app), or before the gate or the "
                "webhook is first used"
            )
        reading.config = config
        app._tenant_gate_config = config
        return config


def built_from_settings(app: Any, what: str) -> None:
    """Say that *what* (e.g. ``"the gate"``) was just built from :func:`gate_config`:
    from now on a changed setting raises :class:`ConfigError` instead of taking
    effect. Call it once *what* is built (not when building it failed)."""
    with _lock:
        users = _reading_of(app).users
        if what not in users:
            users.append(what)


def _changed_keys(old: GateConfig, new: GateConfig) -> list[str]:
    return [PREFIX + f.name for f in fields(old) if getattr(old, f.name) != getattr(new, f.name)]
