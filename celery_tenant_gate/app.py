"""Per-app singletons: the config and the tenant state look-up, cached on the Celery app
(as celery-redbeat does), so that tests and users can swap them."""

from __future__ import annotations

import threading
from typing import Any

from .config import GateConfig
from .lookup import TenantStates

_lock = threading.Lock()


def gate_config(app: Any) -> GateConfig:
    """The app's :class:`GateConfig`, read from ``app.conf`` once."""
    config: GateConfig | None = getattr(app, "_tenant_gate_config", None)
    if config is None:
        with _lock:
            config = getattr(app, "_tenant_gate_config", None)
            if config is None:
                config = GateConfig.from_app(app)
                app._tenant_gate_config = config
    return config


def tenant_states(app: Any) -> TenantStates:
    """The app's :class:`TenantStates` (created on first use, one per process)."""
    states: TenantStates | None = getattr(app, "_tenant_gate_states", None)
    if states is None:
        with _lock:
            states = getattr(app, "_tenant_gate_states", None)
            if states is None:
                states = TenantStates.from_config(gate_config(app))
                app._tenant_gate_states = states
    return states
