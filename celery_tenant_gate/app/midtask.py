"""A tenant that stops running while a task's body runs: the body's session raised
:class:`~.errors.TenantUnavailable`, and the task is held (or, deleted, dropped) as
the gate holds it before its body, with no retry counted.

Held, it runs again from the start when its tenant runs: tasks should be idempotent.
"""

from __future__ import annotations

from typing import Any, NoReturn

from celery.exceptions import Ignore, Reject

from celery_tenant_gate.model.carrier import tenant_from_call, tenant_from_request
from celery_tenant_gate.model.errors import TenantDeleted, TenantUnavailable

from .singletons import gate_for


def settle(task: Any, exc: TenantUnavailable) -> NoReturn:
    """Hold or drop *task* (running now) for *exc*, then raise ``Ignore`` (Celery then
    records nothing: the task lives on in its tenant's queue). Raises *exc* itself
    when it is not about the task's own tenant, or for a call that is not a worker's
    (``apply()``, a direct call): there is nothing to hold."""
    request = task.request
    if getattr(request, "is_eager", False) or getattr(request, "called_directly", True):
        raise exc
    ctx = tenant_from_request(request)
    if ctx is None:
        ctx = tenant_from_call(
            request.args, request.kwargs, task.tenant_arg, task._tenant_arg_index()
        )
    if ctx != exc.context_id:
        raise exc  # another tenant's session: a failure of this task like any other
    gate = gate_for(task.app)
    try:
        if isinstance(exc, TenantDeleted):
            gate.drop_running(task, request, ctx)
        else:
            gate.hold_running(task, request, ctx)
    except Exception as failure:
        if task.acks_late:
            # Back to the broker rather than a failure that acks and loses it.
            raise Reject(f"tenant-gate: mid-task hold failed: {failure!r}", requeue=True) from exc
        raise
    raise Ignore(f"tenant-gate: {'dropped' if isinstance(exc, TenantDeleted) else 'held'}: {exc}")
