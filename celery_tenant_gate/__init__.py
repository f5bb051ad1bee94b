"""celery-tenant-gate: tenant-aware Celery workers for SuperOffice CRM Online.

What an app writes, in its Celery module::

    from celery_tenant_gate import install, tenant_task

    install(app)

    @tenant_task(app)
    def sync_contacts(self, context_id): ...

and, in its web app, one webhook line (``make_wsgi_app``, ``make_asgi_app``,
``webhook_view`` for Django, ``webhook_blueprint`` for Flask, ``webhook_router`` for
FastAPI). Everything else lives in the subpackages, which are the layers: ``model``
(pure), ``config``, ``io``, ``gate`` (policy), then the wiring (``observe``, ``app``,
``worker``, ``admin``, ``web``); see the README's Architecture section.

The names below are imported lazily, so that a web process that only receives
webhooks does not import the worker side.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0.dev0"

#: Each public name: the module it lives in (``None``: the name is that module).
_EXPORTS: dict[str, tuple[str, str | None]] = {
    "install": ("worker.install", "install"),
    "tenant_task": ("app.task", "tenant_task"),
    "TenantTask": ("app.task", "TenantTask"),
    "TenantInfo": ("app.task", "TenantInfo"),
    "gate_for": ("app.singletons", "gate_for"),
    "tenant_states": ("app.singletons", "tenant_states"),
    "TENANT_HEADER": ("model.carrier", "TENANT_HEADER"),
    "TenantGateError": ("model.errors", "TenantGateError"),
    "TenantUnavailable": ("model.errors", "TenantUnavailable"),
    "tenant_session": ("app.session", "tenant_session"),
    "signals": ("gate.signals", None),
    "make_wsgi_app": ("web.wsgi", "make_wsgi_app"),
    "make_asgi_app": ("web.asgi", "make_asgi_app"),
    "webhook_view": ("web.django", "webhook_view"),
    "webhook_blueprint": ("web.flask", "webhook_blueprint"),
    "webhook_router": ("web.starlette", "webhook_router"),
}

__all__ = [
    "TENANT_HEADER",
    "TenantGateError",
    "TenantInfo",
    "TenantTask",
    "TenantUnavailable",
    "__version__",
    "gate_for",
    "install",
    "make_asgi_app",
    "make_wsgi_app",
    "signals",
    "tenant_session",
    "tenant_states",
    "tenant_task",
    "webhook_blueprint",
    "webhook_router",
    "webhook_view",
]

if TYPE_CHECKING:
    from celery_tenant_gate.app.session import tenant_session
    from celery_tenant_gate.app.singletons import gate_for, tenant_states
    from celery_tenant_gate.app.task import TenantInfo, TenantTask, tenant_task
    from celery_tenant_gate.gate import signals
    from celery_tenant_gate.model.carrier import TENANT_HEADER
    from celery_tenant_gate.model.errors import TenantGateError, TenantUnavailable
    from celery_tenant_gate.web.asgi import make_asgi_app
    from celery_tenant_gate.web.django import webhook_view
    from celery_tenant_gate.web.flask import webhook_blueprint
    from celery_tenant_gate.web.starlette import webhook_router
    from celery_tenant_gate.web.wsgi import make_wsgi_app
    from celery_tenant_gate.worker.install import install


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'celery_tenant_gate' has no attribute {name!r}") from None
    found = import_module(f".{module}", __name__)
    value = found if attribute is None else getattr(found, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
