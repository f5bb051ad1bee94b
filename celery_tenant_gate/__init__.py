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
    "gate_for": "app",
    "install": "install",
    "tenant_task": "task",
    "TenantTask": "task",
    "TenantInfo": "task",
    "Gate": "gate",
    "TenantStatus": "gate",
    "HeldMessage": "held",
    "TENANT_HEADER": "carrier",
}

__all__ = [
    "TENANT_HEADER",
    "ConfigError",
    "Gate",
    "GateConfig",
    "HeldMessage",
    "InvalidTenantId",
    "State",
    "StateAPIError",
    "StateAPIResponseError",
    "StateAPIUnavailable",
    "StateClient",
    "TenantGateError",
    "TenantInfo",
    "TenantMismatch",
    "TenantNotFound",
    "TenantRecord",
    "TenantState",
    "TenantStates",
    "TenantStatus",
    "TenantTask",
    "Verdict",
    "__version__",
    "gate_config",
    "gate_for",
    "install",
    "tenant_states",
    "tenant_task",
]

if TYPE_CHECKING:
    from .app import gate_config, gate_for, tenant_states
    from .carrier import TENANT_HEADER
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
    from .gate import Gate, TenantStatus
    from .held import HeldMessage
    from .install import install
    from .lookup import TenantStates
    from .record import TenantRecord
    from .state_api import StateClient
    from .states import State, TenantState
    from .task import TenantInfo, TenantTask, tenant_task
    from .verdicts import Verdict


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'celery_tenant_gate' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
