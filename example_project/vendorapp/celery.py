"""The vendor's Celery app, with the gate installed: ``celery -A example_project.vendorapp worker``.

Nothing else is needed for tenant-aware workers: ``install(app)`` adds the gate to
every worker of this app, and the tasks in ``tasks.py`` say which argument names the
tenant.
"""

from __future__ import annotations

from celery import Celery

from celery_tenant_gate import install
from example_project.vendorapp.settings import Settings


def make_app(settings: Settings | None = None) -> Celery:
    """The app, configured by *settings* (default: from the environment)."""
    settings = settings or Settings.from_env()
    app = Celery("vendorapp", include=["example_project.vendorapp.tasks"], set_as_current=False)
    app.conf.update(settings.celery_conf())
    app.conf.vendorapp_settings = settings  # for the task bodies, see tasks.settings_of
    install(app)  # the one line that makes the workers tenant-aware
    return app


app = make_app()
