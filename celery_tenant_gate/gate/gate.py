"""The gate: run, hold or drop each tenant-scoped task, and the tenant controls
(``pause``, ``resume``, ``state``, ``held``, ``purge``) that hold and release.

One :class:`Gate` per app and process (see :func:`celery_tenant_gate.app.gate_for`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from celery_tenant_gate.config.settings import GateConfig
from celery_tenant_gate.io.store.deadletters import DeadLetters
from celery_tenant_gate.model.held import HeldQueues

from .controls import TenantControls
from .lookup import TenantStates
from .screen import Screening
from .storeloss import StoreGuard
from .sweep import Sweep


class Gate(Screening):
    """Decides per task message, and moves a tenant's work in and out of its queue.

    The per-task hot path is its own (inherited from :class:`~.screen.Screening`:
    :meth:`screen`, :meth:`recheck`, :meth:`queue_for`); the rest it offers from its
    parts: the tenant controls (:class:`~.controls.TenantControls`: :meth:`pause`,
    :meth:`resume`, :meth:`release`, :meth:`purge`, :meth:`mark_deleted`,
    :meth:`state`, :meth:`held`, :meth:`paused`) and the sweep
    (:class:`~.sweep.Sweep`: :meth:`sweep`).
    """

    def __init__(
        self,
        app: Any,
        config: GateConfig,
        states: TenantStates,
        held: HeldQueues,
        dead: DeadLetters,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(app, config, states, dead, clock=clock)
        self.held_queues = held
        controls = TenantControls(
            config, states, held, dead, hooks=self.hooks, queue_for=self.queue_for, clock=clock
        )
        self.pause = controls.pause
        self.resume = controls.resume
        self.release = controls.release
        self.purge = controls.purge
        self.mark_deleted = controls.mark_deleted
        self.state = controls.state
        self.held = controls.held
        self.paused = controls.paused
        self.sweep = Sweep(config, states, held, controls, clock=clock).run
        # The store losing its data is noticed and repaired (see .storeloss).
        patience = max(10.0, 5 * config.sweep_interval)
        self.store_guard = StoreGuard(states, held, patience=patience, clock=clock)
        states.store_guard = self.store_guard
