"""The app's tasks: two tenant-scoped ones, which the gate holds while their tenant is
away, and one that concerns no tenant, which the gate never looks at.

Every body notes what it did in the activity log (``activity.py``).
"""

from __future__ import annotations

import time
from typing import Any

import requests

from celery_tenant_gate import tenant_task
from celery_tenant_gate.model.carrier import HELD_COUNT_HEADER
from celery_tenant_gate.model.errors import TenantMisdirected
from example_project.vendorapp import crm
from example_project.vendorapp.activity import ActivityLog
from example_project.vendorapp.celery import app
from example_project.vendorapp.settings import Settings

#: Seconds before a failed call to a tenant is tried again.
RETRY_DELAY = 1.0


@tenant_task(app, tenant_arg="context_id", bind=True, name="vendorapp.sync_contacts", max_retries=5)
def sync_contacts(self: Any, context_id: str, since: str | None = None) -> int:
    """Fetch the tenant's contacts (changed *since*) from its SuperOffice API, page by
    page. Idempotent: if the tenant stops running half-way, the session's
    ``TenantUnavailable`` holds the task, which runs again from the start later."""
    started = time.time()
    session = crm.prepare(self.tenant.session, via=settings_of(self.app).tenant_api_via)
    try:
        contacts = crm.all_pages(session, "v1/Contact?$top=200")
    except (TenantMisdirected, requests.RequestException) as exc:
        # 421 twice: the State API does not know the new server yet; other errors:
        # the server had a hiccup. Either way, again in a moment.
        note(self, started, context_id, api=self.tenant.api, error=str(exc))
        raise self.retry(exc=exc, countdown=RETRY_DELAY) from exc
    note(self, started, context_id, api=session.api, contacts=len(contacts))
    return len(contacts)


@tenant_task(app, tenant_arg="context_id", bind=True, name="vendorapp.send_digest", max_retries=5)
def send_digest(self: Any, context_id: str, period: str = "daily") -> int:
    """Sum up the tenant's sales of the *period* (mailing it is left out)."""
    started = time.time()
    session = crm.prepare(self.tenant.session, via=settings_of(self.app).tenant_api_via)
    try:
        sales = crm.all_pages(session, "v1/Sale")
    except (TenantMisdirected, requests.RequestException) as exc:
        note(self, started, context_id, api=self.tenant.api, error=str(exc))
        raise self.retry(exc=exc, countdown=RETRY_DELAY) from exc
    total = sum(int(sale.get("Amount", 0)) for sale in sales)
    note(self, started, context_id, api=session.api, period=period, total=total)
    return total


@app.task(bind=True, name="vendorapp.refresh_exchange_rates")  # type: ignore[untyped-decorator]
def refresh_exchange_rates(self: Any) -> None:
    """Work for no tenant in particular: the gate lets it through untouched."""
    note(self, time.time(), None)


def settings_of(app: Any) -> Settings:
    settings: Settings = app.conf.vendorapp_settings
    return settings


def note(task: Any, started: float, context_id: str | None, **fields: Any) -> None:
    """Add what the running *task* did (for tenant *context_id*) to the activity log."""
    log: ActivityLog | None = getattr(task.app, "_vendorapp_activity", None)
    if log is None:
        settings = settings_of(task.app)
        log = task.app._vendorapp_activity = ActivityLog.from_url(
            settings.redis_url, settings.activity_key
        )
    request = task.request
    held = getattr(request, HELD_COUNT_HEADER, None) or (request.headers or {}).get(
        HELD_COUNT_HEADER
    )
    log.record(
        id=request.id,
        task=task.name,
        ctx=context_id,
        started=started,
        finished=time.time(),
        retries=request.retries,
        held=int(held or 0),  # how many times the gate held it before it ran
        worker=request.hostname,
        **fields,
    )
