"""Tenant-scoped tasks: the base class and the decorator.

::

    @tenant_task(app, tenant_arg="context_id", bind=True, max_retries=3)
    def sync_contacts(self, context_id, since=None):
        self.tenant.session.get("v1/Contact", ...)

    sync_contacts.delay("Cust12345")                 # the tenant travels in a header
    sync_contacts.apply_async(kwargs={...}, tenant="Cust12345", countdown=60)
    app.send_task("proj.sync_contacts", args=["Cust12345"],
                  headers={TENANT_HEADER: "Cust12345"})

or, equivalently, ``@app.task(base=TenantTask, tenant_arg="context_id")``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from celery import Task, current_app, current_task
from celery.exceptions import Ignore, Reject

from celery_tenant_gate.config.reading import built_from_settings
from celery_tenant_gate.model.carrier import (
    HEADER,
    choose_tenant,
    positional_index,
    request_was_held,
    tenant_from_call,
    tenant_from_headers,
    tenant_from_request,
)
from celery_tenant_gate.model.errors import TenantGateError, TenantUnavailable
from celery_tenant_gate.model.ids import compile_pattern, validate_tenant_id
from celery_tenant_gate.model.verdicts import Verdict

from .midtask import settle
from .session import TenantSession, shared_adapter
from .singletons import gate_config, gate_for, tenant_states

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class TenantInfo:
    """The tenant of the running task, as the gate last knew it."""

    context_id: str
    #: The tenant's current server, e.g. ``https://online3.superoffice.com/Cust12345``.
    endpoint: str
    #: Its API base URL; call this, never a stored or hard-coded one (tenants move).
    api: str
    #: The state's API name, e.g. ``"Running"``.
    state: str
    _session: Callable[[], TenantSession] | None = field(default=None, repr=False, compare=False)

    @property
    def session(self) -> TenantSession:
        """The tenant's HTTP session for this run of the task (one per run; its
        connections are pooled for the process): paths go to the tenant's current
        ``Api``, each request is preceded by the state check, and a tenant that stops
        running holds the task (see :mod:`celery_tenant_gate.app.session`)."""
        if self._session is None:
            raise TenantGateError(
                f"this TenantInfo of {self.context_id} was not made by a running task: "
                "use celery_tenant_gate.tenant_session(app, context_id)"
            )
        return self._session()


class TenantTask(Task):  # type: ignore[misc]
    """Base class of tenant-scoped tasks. Options are class attributes, settable in
    ``@app.task(base=TenantTask, ...)``."""

    #: Marks the task for the gate (plain tasks are never looked at).
    tenant_scoped = True
    #: The name of the task's argument that carries the tenant id, or None when the
    #: tenant is only given with ``apply_async(tenant=...)`` or in the header.
    tenant_arg: str | None = "context_id"

    _arg_index: int | None = None
    _arg_index_known = False

    def _tenant_arg_index(self) -> int | None:
        if not self._arg_index_known:
            name = self.tenant_arg
            self._arg_index = positional_index(self.run, name, bound=False) if name else None
            self._arg_index_known = True
        return self._arg_index

    def apply_async(
        self,
        args: Any = None,
        kwargs: Any = None,
        task_id: str | None = None,
        producer: Any = None,
        link: Any = None,
        link_error: Any = None,
        shadow: str | None = None,
        **options: Any,
    ) -> Any:
        """As Celery's, plus ``tenant=``. The tenant comes from ``tenant=``, the header,
        or the tenant argument; it is checked here, so a call without a tenant or with
        a malformed one fails at once with :class:`~celery_tenant_gate.InvalidTenantId`.
        """
        explicit = options.pop("tenant", None)
        headers = dict(options.pop("headers", None) or {})
        ctx = choose_tenant(
            explicit,
            tenant_from_headers(headers),
            tenant_from_call(args, kwargs, self.tenant_arg, self._tenant_arg_index()),
            self.name,
        )
        headers[HEADER] = validate_tenant_id(ctx, _pattern_of(self.app))
        return super().apply_async(
            args,
            kwargs,
            task_id,
            producer,
            link,
            link_error,
            shadow,
            headers=headers,
            **options,
        )

    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        """The last check, in the pool process, right before the body: a task that
        was handed to the pool before its tenant paused is held (or dropped) here."""
        request = self.request  # a thread-local look-up: once
        if getattr(request, "is_eager", False):
            return
        try:
            verdict = gate_for(self.app).recheck(self, request)
        except Exception as exc:
            if self.acks_late:
                # Back to the broker rather than a failure that acks and loses it.
                raise Reject(f"tenant-gate: re-check failed: {exc!r}", requeue=True) from exc
            raise
        if verdict is not Verdict.RUN:
            raise Ignore(f"tenant-gate: {verdict.value}")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # The body (``run``), not an own ``__call__``, catches what the tenant session
        # raises: Celery calls ``run`` directly unless the task class defines
        # ``__call__``, and its ``Task.__call__`` costs about 12 µs a task.
        super().__init_subclass__(**kwargs)
        run = cls.__dict__.get("run")
        if run is not None:
            cls.run = _settling(run)

    @property
    def tenant(self) -> TenantInfo:
        """The running task's tenant, with its current endpoint and API URL."""
        raw = tenant_from_request(self.request)
        if raw is None:
            raw = tenant_from_call(
                self.request.args, self.request.kwargs, self.tenant_arg, self._tenant_arg_index()
            )
        ctx = validate_tenant_id(raw, _pattern_of(self.app))
        record = tenant_states(self.app).record(ctx)
        state = record.state if record is not None else None
        return TenantInfo(
            context_id=ctx,
            endpoint=state.endpoint if state else "",
            api=state.api if state else "",
            state=state.state.api_name if state else "",
            _session=lambda: self._session_for(ctx),
        )

    def _session_for(self, ctx: str) -> TenantSession:
        """The run's session (kept on its request: one per run)."""
        request = self.request
        session: TenantSession | None = getattr(request, "_tenant_gate_session", None)
        if session is None or session.context_id != ctx:
            session = TenantSession(
                ctx,
                tenant_states(self.app),
                adapter=shared_adapter(self.app),
                wait=False,  # as the gate: never waits on the State API
                released=request_was_held(request),
            )
            request._tenant_gate_session = session
        return session


def _pattern_of(app: Any) -> Any:
    pattern = getattr(app, "_tenant_gate_pattern", None)
    if pattern is None:
        pattern = compile_pattern(gate_config(app).tenant_id_pattern)
        built_from_settings(app, "the tenant check of tenant tasks")
        app._tenant_gate_pattern = pattern
    return pattern


def _settling(run: Any) -> Any:
    """*run* (a task's body: a method, or Celery's staticmethod for an unbound task)
    such that a :class:`~celery_tenant_gate.TenantUnavailable` raised out of it (the
    tenant stopped running meanwhile) holds the task, no retry counted, or drops it
    (deleted): see :func:`.midtask.settle`."""
    if isinstance(run, staticmethod):
        fun = run.__func__

        @functools.wraps(fun)
        def body(*args: Any, **kwargs: Any) -> Any:
            try:
                return fun(*args, **kwargs)
            except TenantUnavailable as exc:
                settle(current_task._get_current_object(), exc)

        return staticmethod(body)

    @functools.wraps(run)
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return run(self, *args, **kwargs)
        except TenantUnavailable as exc:
            settle(self, exc)

    return method


def tenant_task(
    app: Any = None,
    *,
    tenant_arg: str | None = "context_id",
    base: type[TenantTask] = TenantTask,
    **options: Any,
) -> Callable[[F], Any]:
    """Declare a tenant-scoped task: ``@tenant_task(app, tenant_arg="context_id")``.

    Takes every option of ``@app.task`` (``bind``, ``max_retries``, ``queue``...).
    Without *app*, the current app is used (as ``@shared_task`` does).
    """

    def decorate(fun: F) -> Any:
        target = app if app is not None else current_app
        return target.task(base=base, tenant_arg=tenant_arg, **options)(fun)

    return decorate
