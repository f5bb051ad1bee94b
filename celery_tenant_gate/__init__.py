"""celery-tenant-gate: tenant-aware Celery workers for SuperOffice CRM Online.

The names below are imported lazily, so that a web process that only receives
webhooks does not import the worker side.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0.dev0"

_EXPORTS = {
    "GateConfig": "config.settings",
    "TenantGateError": "model.errors",
    "ConfigError": "model.errors",
    "InvalidTenantId": "model.errors",
    "StateAPIError": "model.errors",
    "TenantNotFound": "model.errors",
    "StateAPIUnavailable": "model.errors",
    "StateAPIResponseError": "model.errors",
    "TenantMismatch": "model.errors",
    "State": "model.states",
    "TenantState": "model.states",
    "Verdict": "model.verdicts",
    "TenantRecord": "model.record",
    "StateClient": "io.superoffice.state_api",
    "TenantStates": "gate.lookup",
    "tenant_states": "app.singletons",
    "gate_config": "app.singletons",
    "gate_for": "app.singletons",
    "install": "worker.install",
    "tenant_task": "app.task",
    "TenantTask": "app.task",
    "TenantInfo": "app.task",
    "Gate": "gate.gate",
    "TenantStatus": "gate.controls",
    "HeldMessage": "model.held",
    "TENANT_HEADER": "model.carrier",
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
    from celery_tenant_gate.app.singletons import gate_config, gate_for, tenant_states
    from celery_tenant_gate.app.task import TenantInfo, TenantTask, tenant_task
    from celery_tenant_gate.config.settings import GateConfig
    from celery_tenant_gate.gate.controls import TenantStatus
    from celery_tenant_gate.gate.gate import Gate
    from celery_tenant_gate.gate.lookup import TenantStates
    from celery_tenant_gate.io.superoffice.state_api import StateClient
    from celery_tenant_gate.model.carrier import TENANT_HEADER
    from celery_tenant_gate.model.errors import (
        ConfigError,
        InvalidTenantId,
        StateAPIError,
        StateAPIResponseError,
        StateAPIUnavailable,
        TenantGateError,
        TenantMismatch,
        TenantNotFound,
    )
    from celery_tenant_gate.model.held import HeldMessage
    from celery_tenant_gate.model.record import TenantRecord
    from celery_tenant_gate.model.states import State, TenantState
    from celery_tenant_gate.model.verdicts import Verdict
    from celery_tenant_gate.worker.install import install


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'celery_tenant_gate' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
