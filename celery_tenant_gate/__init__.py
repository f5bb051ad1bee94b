"""celery-tenant-gate: tenant-aware Celery workers for SuperOffice CRM Online.

The names below are imported lazily, so that a web process that only receives
webhooks does not import the worker side.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0.dev0"

_EXPORTS = {
    "GateConfig": "config",
    "TenantGateError": "errors",
    "ConfigError": "errors",
    "InvalidTenantId": "errors",
    "StateAPIError": "errors",
    "TenantNotFound": "errors",
    "StateAPIUnavailable": "errors",
    "StateAPIResponseError": "errors",
    "TenantMismatch": "errors",
    "State": "states",
    "TenantState": "states",
    "Verdict": "verdicts",
    "TenantRecord": "record",
    "StateClient": "state_api",
    "TenantStates": "lookup",
    "tenant_states": "app",
    "gate_config": "app",
}

__all__ = [
    "ConfigError",
    "GateConfig",
    "InvalidTenantId",
    "State",
    "StateAPIError",
    "StateAPIResponseError",
    "StateAPIUnavailable",
    "StateClient",
    "TenantGateError",
    "TenantMismatch",
    "TenantNotFound",
    "TenantRecord",
    "TenantState",
    "TenantStates",
    "Verdict",
    "__version__",
    "gate_config",
    "tenant_states",
]

if TYPE_CHECKING:
    from .app import gate_config, tenant_states
    from .config import GateConfig
    from .errors import (
        ConfigError,
        InvalidTenantId,
        StateAPIError,
        StateAPIResponseError,
        StateAPIUnavailable,
        TenantGateError,
        TenantMismatch,
        TenantNotFound,
    )
    from .lookup import TenantStates
    from .record import TenantRecord
    from .state_api import StateClient
    from .states import State, TenantState
    from .verdicts import Verdict


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'celery_tenant_gate' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
