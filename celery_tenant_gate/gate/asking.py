"""Asking the State API about a tenant, one process of the cluster at a time, and
storing the answer (or the failure) for every process."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from celery_tenant_gate.config.settings import GateConfig
from celery_tenant_gate.io.store.state_store import StateStore
from celery_tenant_gate.io.superoffice.state_api import StateClient
from celery_tenant_gate.model.errors import StateAPIError
from celery_tenant_gate.model.record import Source, TenantRecord
from celery_tenant_gate.model.states import TenantState

logger = logging.getLogger(__name__)


class StateAsker:
    """Gets a current record for a tenant: from the State API under the tenant's
    look-up lock, or from the process that holds it (whose answer is announced:
    *wait_for_change* blocks until any change is, or its timeout)."""

    def __init__(
        self,
        store: StateStore,
        client: StateClient,
        config: GateConfig,
        wait_for_change: Callable[[float], None],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.client = client
        self.config = config
        self._wait_for_change = wait_for_change
        self._clock = clock

    def refresh_shared(self, ctx: str, known: TenantRecord | None) -> TenantRecord | None:
        """A current record, asking the State API only if no other process is. Waits
        at most ``lock_timeout`` for another process's answer (then returns *known*)."""
        timeout = self.config.lock_timeout
        deadline = time.monotonic() + timeout
        while True:
            token = self.store.try_lock(ctx, timeout)
            if token is not None:
                try:
                    return self.ask(ctx, known)
                finally:
                    self.store.unlock(ctx, token)
            # Another process is asking: wait for its answer, announced on the channel.
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    logger.warning(
                        "tenant-gate: gave up waiting %.1fs for another process to look up %s",
                        timeout,
                        ctx,
                    )
                    return known
                self._wait_for_change(min(remaining, 0.05))
                record, locked = self.store.get_with_lock(ctx)
                if record is not None and not record.is_due(self._clock()):
                    return record
                known = record or known
                if not locked:
                    break  # it gave up or crashed: take the lock ourselves

    def ask(
        self, ctx: str, known: TenantRecord | None, *, raise_errors: bool = False
    ) -> TenantRecord | None:
        """Ask the State API now and store what it says (or that it failed: asked
        again after ``error_retry_interval`` or its ``Retry-After``). With
        *raise_errors*, a :class:`StateAPIError` is raised once the failure is stored."""
        attempted_at = self._clock()
        try:
            state = self.client.get(ctx)
        except StateAPIError as exc:
            retry = max(self.config.error_retry_interval, getattr(exc, "retry_after", 0) or 0)
            logger.warning("tenant-gate: %s; asking again in %.0fs", exc, retry)
            record, _ = self.store.write_failure(
                ctx, str(exc), attempted_at=attempted_at, check_after=attempted_at + retry
            )
            if raise_errors:
                raise
            return record
        learnt_at = self._clock()
        fresh_until = self.fresh_until(state, learnt_at)
        record, applied = self.store.write_state(
            state,
            source=Source.PULL,
            observed_at=attempted_at,
            learnt_at=learnt_at,
            fresh_until=fresh_until,
            check_after=fresh_until,
        )
        if not applied:
            logger.info("tenant-gate: a newer state of %s was stored meanwhile", ctx)
        return record

    def fresh_until(self, state: TenantState, now: float) -> float:
        """Until when *state*, learnt at *now*, is trusted: its ``ValidUntil``, kept
        between ``min_ttl`` and ``max_ttl`` from now."""
        lo, hi = self.config.min_ttl, self.config.max_ttl
        ttl = lo if state.valid_until is None else state.valid_until.timestamp() - now
        return now + min(max(ttl, lo), hi)
