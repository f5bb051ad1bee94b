"""A timed pause: the tenant's API asked to be left alone (429 ``Retry-After``), so
no worker sends it anything until then; the sweep resumes it afterwards, once its
state runs (as it does after a notification's minimum pause, see :func:`.sweep.plan`).

Until per-tenant limits exist, this is how a 429 backs off cluster-wide: the
tenant's tasks wait in its queue, and no worker slot sleeps.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from . import signals
from .lookup import TenantStates

logger = logging.getLogger(__name__)


def back_off(
    states: TenantStates,
    context_id: str,
    seconds: float,
    reason: str,
    *,
    clock: Callable[[], float] = time.time,
) -> float:
    """Pause *context_id* for every worker (by ``gate``) for at least *seconds*;
    returns until when. A longer wait already asked for stands."""
    until = clock() + max(0.0, seconds)
    known = states.store.get(context_id)
    if known is None or known.resume_not_before < until:
        # Written before the pause: a sweep between the two would otherwise end the
        # pause at once (its tenant runs).
        states.store.set_fields(context_id, {"resume_not_before": repr(until)})
    if states.set_paused(context_id, True, reason=reason, by="gate"):
        logger.info("tenant-gate: paused %s for %.1f s (%s)", context_id, seconds, reason)
        signals.tenant_paused.send(
            sender=context_id, context_id=context_id, reason=reason, by="gate"
        )
    return until
