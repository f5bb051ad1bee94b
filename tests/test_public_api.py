"""The public API: a screenful of names, each importable from the package root, and
nothing imported until it is used."""

from __future__ import annotations

import subprocess
import sys

import pytest

import celery_tenant_gate

#: What a user writes in their app. A name added here is a promise: think twice.
PUBLIC = {
    "__version__",
    "install",
    "tenant_task",
    "TenantTask",
    "TenantInfo",
    "gate_for",
    "tenant_states",
    "TENANT_HEADER",
    "TenantGateError",
    # The tenant session (issue 15): for code outside tasks, and what it raises when
    # the tenant does not run (TenantDeleted, TenantRateLimited derive from it).
    "tenant_session",
    "TenantUnavailable",
    "signals",
    "make_wsgi_app",
    "make_asgi_app",
    "webhook_view",
    "webhook_blueprint",
    "webhook_router",
}


def test_the_public_api_fits_one_screen() -> None:
    assert set(celery_tenant_gate.__all__) == PUBLIC
    assert len(celery_tenant_gate.__all__) <= 17


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_every_public_name_resolves(name: str) -> None:
    assert getattr(celery_tenant_gate, name) is not None


def test_the_public_names_are_the_real_objects() -> None:
    from celery_tenant_gate.gate import signals
    from celery_tenant_gate.model.errors import ConfigError, TenantGateError
    from celery_tenant_gate.worker.install import install

    assert celery_tenant_gate.install is install
    assert celery_tenant_gate.signals is signals
    assert celery_tenant_gate.TenantGateError is TenantGateError
    assert issubclass(ConfigError, celery_tenant_gate.TenantGateError)
    assert issubclass(celery_tenant_gate.TenantUnavailable, celery_tenant_gate.TenantGateError)
    assert celery_tenant_gate.TENANT_HEADER == "tenant_gate_ctx"


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'Gate'"):
        _ = celery_tenant_gate.Gate  # type: ignore[attr-defined]


def test_importing_the_package_imports_nothing_else() -> None:
    code = (
        "import sys, celery_tenant_gate\n"
        "print(sorted(m for m in sys.modules if m.startswith('celery_tenant_gate.')))\n"
        "print('celery' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.split("\n")[:2] == ["[]", "False"]
