"""``install(app)``: the one call that makes a Celery app's workers tenant-aware."""

from __future__ import annotations

from typing import Any

from celery_tenant_gate.app.singletons import gate_config, gate_for
from celery_tenant_gate.gate.gate import Gate

from .control import register as register_control_task
from .step import TenantGateStep


def install(app: Any) -> Gate:
    """Wire the gate into *app*'s workers and return the app's :class:`Gate`, whose
    ``pause``, ``resume``, ``state``, ``held`` and ``purge`` work from any process.

    Reads and checks the ``tenant_gate_*`` settings now: a bad value raises
    :class:`~celery_tenant_gate.ConfigError` naming the key. Idempotent.
    """
    gate_config(app)
    if not getattr(app, "_tenant_gate_installed", False):
        app.steps["consumer"].add(TenantGateStep)
        register_control_task(app, gate_for)
        app._tenant_gate_installed = True
    return gate_for(app)
