"""Tenant administration: what ``celery tenant-gate`` does, without the command line.

Each method of :class:`TenantAdmin` does one subcommand and returns its typed result
(:mod:`celery_tenant_gate.admin.results`), never text: :mod:`celery_tenant_gate.admin.render`
turns it into what ``--json`` prints and what a person reads. A failure a user can act
on is an :class:`~celery_tenant_gate.admin.errors.AdminError`, whose ``exit_code`` the
command exits with.

Pauses and resumes are applied here, through the app's :class:`~celery_tenant_gate.gate.Gate`,
as the control task applies them: the shared store in Redis is what every worker
reads, and every write to it is announced to every worker's cache.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import redis
from kombu.utils.url import maybe_sanitize_url
from redis.backoff import NoBackoff
from redis.retry import Retry

from celery_tenant_gate.app.singletons import gate_config, gate_for
from celery_tenant_gate.gate.controls import TenantStatus
from celery_tenant_gate.gate.gate import Gate
from celery_tenant_gate.model.errors import ConfigError
from celery_tenant_gate.model.ids import compile_pattern, validate_tenant_id

from .errors import AdminError, Unavailable, failures, unknown_tenant
from .explain import why
from .results import (
    CheckResult,
    HeldResult,
    PausedResult,
    PauseResult,
    PurgeResult,
    ResumeResult,
    StatusResult,
)

__all__ = ["PURGE_REASON", "TenantAdmin"]

#: Why ``purge`` dropped a task, as its dead letter says.
PURGE_REASON = "purged by hand (celery tenant-gate purge)"


class TenantAdmin:
    """The subcommands of ``celery tenant-gate``, for one Celery app.

    *clock* gives the time (Unix seconds) that results count ages from.

    >>> TenantAdmin(app).status(["Cust12345"]).tenants  # doctest: +SKIP
    """

    def __init__(self, app: Any, *, clock: Callable[[], float] = time.time) -> None:
        try:
            self.config = gate_config(app)
        except ConfigError as exc:
            raise AdminError(str(exc)) from None
        self.app = app
        self._clock = clock
        self._pattern = compile_pattern(self.config.tenant_id_pattern)
        self._gate: Gate | None = None

    @property
    def gate(self) -> Gate:
        """The app's gate, made on first use."""
        if self._gate is None:
            self._gate = gate_for(self.app)
        return self._gate

    # -- the subcommands -------------------------------------------------------------

    def status(self, tenants: Sequence[str] = (), *, every: bool = False) -> StatusResult:
        """The tenants' state, verdict, pause, held and dropped tasks, from the shared
        store (the State API is not asked). No tenants: those paused or holding tasks;
        *every*: all the store has a record of. Tenants asked for that the store does
        not know are left out and named in the result's ``unknown``."""
        with self._failures():
            wanted = tuple(dict.fromkeys(self._tenant(value) for value in tenants))
            if wanted and every:
                raise AdminError("give tenants or --all, not both")
            self._connect(broker=True)
            if wanted:
                found = [self._status(ctx) for ctx in wanted]
                shown = [status for status in found if _known(status)]
            else:
                store = self.gate.states.store
                names = (
                    store.tenants() if every else set(store.paused()) | set(store.held_tenants())
                )
                found = [self._status(ctx) for ctx in sorted(names)]
                shown = found if every else [status for status in found if _needs_attention(status)]
            unknown = tuple(status.context_id for status in found if wanted and not _known(status))
            return StatusResult(
                tuple(shown), self._clock(), asked=wanted, every=every, unknown=unknown
            )

    def paused(self) -> PausedResult:
        """The paused tenants: by whom, since when, why."""
        with self._failures():
            self._connect(broker=True)
            found = tuple(self._status(ctx) for ctx in sorted(self.gate.paused()))
            return PausedResult(found, self._clock())

    def pause(self, tenant: str, reason: str) -> PauseResult:
        """Pause a tenant by hand for every worker, until :meth:`resume`."""
        with self._failures():
            ctx = self._tenant(tenant)
            if not reason.strip():
                raise AdminError("the reason must not be empty: say why")
            self._connect(broker=False)
            store = self.gate.states.store
            known = store.get(ctx) is not None
            changed = self.gate.pause(ctx, reason=reason, by="manual")
            record = store.get(ctx)
            return PauseResult(
                context_id=ctx,
                reason=reason,
                changed=changed,
                known=known,
                pause_reason=record.pause_reason if record is not None else reason,
                paused_by=record.paused_by if record is not None else "manual",
            )

    def resume(self, tenant: str) -> ResumeResult:
        """End a tenant's pause and release its held tasks, oldest first."""
        with self._failures():
            ctx = self._tenant(tenant)
            self._connect(broker=True)
            before = self._known_status(ctx)
            was_paused = before.record is not None and before.record.paused
            released = self.gate.resume(ctx)
            after = self._status(ctx)
            because = why(after.record, self.config.policy, self._clock())
            return ResumeResult(ctx, was_paused, released, after.verdict, because)

    def held(self, tenant: str, limit: int = 100) -> HeldResult:
        """The tenant's oldest *limit* held tasks: id, name, how long they wait."""
        with self._failures():
            ctx = self._tenant(tenant)
            if limit < 1:
                raise AdminError(f"the limit must be at least 1, not {limit}")
            self._connect(broker=True)
            status = self._known_status(ctx)
            messages = self.gate.held(ctx, limit) if status.held else []
            return HeldResult(ctx, status.queue, status.held, tuple(messages), self._clock())

    def purge(self, tenant: str, confirm: Callable[[str], bool] | None = None) -> PurgeResult:
        """Drop the tenant's held tasks into its dead-letter list, after *confirm*
        (asked the question) says yes; without *confirm*, at once."""
        with self._failures():
            ctx = self._tenant(tenant)
            self._connect(broker=True)
            status = self._known_status(ctx)
            if status.held and confirm is not None:
                question = (
                    f"Drop the {status.held} held task(s) of {ctx}? They will not run "
                    "(kept in its dead-letter list)."
                )
                if not confirm(question):
                    raise AdminError("not confirmed: nothing was dropped (--yes: do not ask)")
            dropped = self.gate.purge(ctx, reason=PURGE_REASON)
            dead = self.gate.dead
            return PurgeResult(ctx, dropped, dead.count(ctx), dead.key(ctx))

    def check(self, tenant: str) -> CheckResult:
        """Ask the State API now, whatever is cached or stored, store the answer for
        every worker (as any look-up does), and say what the gate decides."""
        with self._failures():
            ctx = self._tenant(tenant)
            self._connect(broker=False)
            record = self.gate.states.refresh(ctx, raise_errors=True)
            now = self._clock()
            policy = self.config.policy
            verdict = policy.decide(record, now)
            return CheckResult(ctx, record, verdict, why(record, policy, now), now)

    # -- helpers --------------------------------------------------------------------------

    def redis_url(self) -> str:
        """The shared state's Redis URL, its password masked."""
        return str(maybe_sanitize_url(self.config.require_redis_url()))

    def broker_url(self) -> str:
        """The broker URL, its password masked."""
        return str(self.app.connection_for_write().as_uri())

    def _tenant(self, value: str) -> str:
        return validate_tenant_id(value, self._pattern)

    def _status(self, ctx: str) -> TenantStatus:
        return self.gate.state(ctx, look_up=False)

    def _known_status(self, ctx: str) -> TenantStatus:
        status = self._status(ctx)
        if not _known(status):
            raise unknown_tenant(ctx)
        return status

    def _failures(self) -> AbstractContextManager[None]:
        return failures(self.redis_url, self.broker_url)

    def _connect(self, *, broker: bool) -> None:
        """Fail fast, naming the URL, when Redis (or the broker) cannot be reached:
        before anything is done, not half-way."""
        client = redis.Redis.from_url(
            self.config.require_redis_url(),
            socket_connect_timeout=3,
            socket_timeout=5,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            client.ping()
        except redis.RedisError as exc:
            raise Unavailable(
                f"cannot connect to Redis at {self.redis_url()} (the shared tenant state, "
                f"tenant_gate_redis_url): {exc}"
            ) from None
        finally:
            client.close()
        if not broker:
            return
        try:
            with self.app.connection_for_write() as connection:
                connection.ensure_connection(
                    max_retries=1, interval_start=0, interval_step=0, timeout=5
                )
        except Exception as exc:  # kombu raises its own errors or the transport's
            raise Unavailable(
                f"cannot connect to the broker at {self.broker_url()} (broker_url): {exc}"
            ) from None


def _known(status: TenantStatus) -> bool:
    return status.record is not None or status.held > 0 or status.dropped > 0


def _needs_attention(status: TenantStatus) -> bool:
    return status.held > 0 or (status.record is not None and status.record.paused)
