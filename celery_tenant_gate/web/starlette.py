"""The webhook as a route for Starlette, or a router for FastAPI::

    from proj.celery import app as celery_app
    from celery_tenant_gate.web.starlette import webhook_route, webhook_router

    api.include_router(webhook_router(celery_app))         # FastAPI
    Starlette(routes=[webhook_route(celery_app)])           # Starlette

Both serve :func:`celery_tenant_gate.web.asgi.make_asgi_app` at *path*.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

try:
    from starlette.routing import Route
except ImportError as exc:  # pragma: no cover - depends on the environment
    from . import missing_extra

    raise missing_extra("Starlette", "fastapi") from exc

from . import DEFAULT_PATH
from .asgi import make_asgi_app

if TYPE_CHECKING:
    from fastapi import APIRouter


def webhook_route(
    receiver_or_app: Any, path: str = DEFAULT_PATH, *, name: str = "tenant_gate_webhook"
) -> Route:
    """A Starlette route answering SuperOffice's notifications (a receiver or a Celery app)."""
    # An ASGI app as endpoint gets every method: the receiver answers 405 itself.
    return Route(path, endpoint=make_asgi_app(receiver_or_app), name=name)


def webhook_router(
    receiver_or_app: Any, path: str = DEFAULT_PATH, *, name: str = "tenant_gate_webhook"
) -> APIRouter:
    """A FastAPI router with the webhook route (a receiver or a Celery app)."""
    try:
        from fastapi import APIRouter  # noqa: PLC0415 - FastAPI is optional here
    except ImportError as exc:  # pragma: no cover - depends on the environment
        from . import missing_extra  # noqa: PLC0415

        raise missing_extra("FastAPI", "fastapi") from exc
    router = APIRouter()
    router.routes.append(webhook_route(receiver_or_app, path, name=name))
    return router
