"""Store loss: the shared store (Redis) came back without its data, and what the gate
does about it (the store side, the epoch and the mirror: :mod:`..io.store.epoch`).

A store that restarted empty, was flushed, or failed over to a replica that is behind
forgets the pauses (a tenant paused by hand would run again) and the index of held
tenants (their held tasks would be stranded: no sweep looks at them). Every process
remembers the store's epoch; every worker (in its sweeper thread) also keeps a
:class:`~..io.store.epoch.Mirror` of the paused tenants and the held index. The epoch
is checked when the change listener (re)subscribes, before a tenant without a record
is looked up, and at every sweep tick. When it is gone or changed, the process fails
closed (:func:`decide` says how): it logs the loss at ERROR, counts it, sends
:data:`~.signals.store_lost`, empties its cache and, if it keeps a mirror, writes
back the pauses (a pause by hand stays one), the held index and a pause by hand for
every tenant found holding work it knew nothing about, then marks the epoch restored.
A process that keeps no mirror (a pool process) holds the tenants without a record
until a worker has restored the store (or ``patience`` ran out: then it restores what
it can itself). Every tenant is asked from the State API again: the records are gone.
"""

from __future__ import annotations

import enum
import logging
import os
import secrets
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol, runtime_checkable

from celery_tenant_gate.io.store.epoch import Epoch, Mirror, Pause, StoreEpoch
from celery_tenant_gate.model.record import TenantRecord
from celery_tenant_gate.model.states import State, TenantState

from . import signals
from .lookup import TenantStates

logger = logging.getLogger(__name__)

#: Why a pause the store lost is back, or a tenant with held work is paused.
RESTORED = "restored after the store lost its data"
FOUND_HELD = "the store lost its data and this tenant has held tasks: resume it by hand"
WAITING = "the store lost its data; waiting for a worker to restore it"


class Step(enum.Enum):
    """What a process does after reading the store's epoch."""

    SAME = "same"  #: the store is the one this process knew
    ADOPT = "adopt"  #: first sight of the epoch: remember it
    CLAIM = "claim"  #: no epoch and none remembered (a new store): create one
    RESTORE = "restore"  #: lost: write back what this process remembers
    FOLLOW = "follow"  #: lost, and a worker restored it already: remember the new one
    WAIT = "wait"  #: lost, not restored yet: hold tenants without a record meanwhile


def decide(
    remembered: str | None,
    found: Epoch | None,
    *,
    keeps_mirror: bool,
    lost_since: float | None,
    now: float,
    patience: float,
) -> Step:
    """What to do, from the epoch this process remembers and the one the store has
    (None: none). No I/O. A process that keeps no mirror of its own waits for one
    that does, *patience* seconds at most after it saw the loss (*lost_since*)."""
    if found is not None and found.id == remembered:
        return Step.SAME
    if remembered is None:
        return Step.CLAIM if found is None else Step.ADOPT
    if keeps_mirror:
        return Step.RESTORE
    if found is not None and found.restored:
        return Step.FOLLOW
    if lost_since is not None and now - lost_since >= patience:
        return Step.RESTORE
    return Step.WAIT


@runtime_checkable
class ListsTenants(Protocol):
    """Held queues that can name the tenants whose queue holds messages (Redis)."""

    def tenants(self) -> list[str]: ...


class StoreGuard:
    """Checks the store's epoch for one process and acts on a loss (see the module)."""

    def __init__(
        self,
        states: TenantStates,
        held_queues: object,
        *,
        patience: float,
        clock: Callable[[], float] = time.time,
        new_id: Callable[[], str] = lambda: secrets.token_hex(8),
    ) -> None:
        self.states = states
        self.epochs = StoreEpoch(states.store)
        self.held_queues = held_queues
        self.patience = patience
        self._clock = clock
        self._new_id = new_id
        #: The epoch this process knows the store by, and its mirror (if it keeps one).
        self.remembered: str | None = None
        self.mirror: Mirror | None = None
        self.lost_since: float | None = None
        #: Losses this process saw.
        self.losses = 0
        self._lock = threading.Lock()
        states.store.on_write = self.noted
        _INSTANCES.add(self)

    # -- what the lookup and the sweeper call -----------------------------------------

    def check(self) -> Step:
        """Read the epoch and act on it. Raises what Redis raises."""
        if not self._lock.acquire(timeout=10.0):  # another thread is restoring
            return Step.WAIT
        try:
            found = self.epochs.read()
            step = decide(
                self.remembered,
                found,
                keeps_mirror=self.mirror is not None and self.mirror.pid == os.getpid(),
                lost_since=self.lost_since,
                now=self._clock(),
                patience=self.patience,
            )
            self._act(step, found)
            return step
        finally:
            self._lock.release()

    def record_for(self, ctx: str) -> TenantRecord | None:
        """For a tenant without a stored record: check the store first, and say what
        to decide from (its restored record, a stand-in that holds, or None)."""
        step = self.check()
        record = self.states.store.get(ctx)
        if record is None and step is Step.WAIT:
            return _stand_in(ctx, self._clock() + 1.0)
        return record

    def tick(self) -> None:
        """A sweeper's tick: check the epoch, then refresh this worker's mirror."""
        self.check()
        if self.remembered is not None:
            mirror = self.epochs.snapshot(self.remembered, self.mirror)
            if mirror is not None:
                self.mirror = mirror

    def noted(self, ctx: str, pause: Pause | None, held_at: float | None) -> None:
        """This process paused (*pause*), resumed (None) or held work of (*held_at*) a
        tenant: kept in its mirror at once, not only at the next tick."""
        mirror = self.mirror
        if mirror is None or mirror.pid != os.getpid():
            return
        paused, held = dict(mirror.paused), dict(mirror.held)
        if held_at is not None:
            held[ctx] = held_at
        elif pause is None:
            paused.pop(ctx, None)
        elif paused.get(ctx, pause).by != "manual" or pause.by == "manual":
            paused[ctx] = pause
        self.mirror = replace(mirror, paused=paused, held=held)

    # -- acting -------------------------------------------------------------------

    def _act(self, step: Step, found: Epoch | None) -> None:
        if step is Step.SAME or (step is Step.WAIT and self.lost_since is not None):
            return
        if step is Step.ADOPT:
            assert found is not None
            self.remembered = found.id
            return
        if step is Step.CLAIM:
            self.remembered = self.epochs.claim(self._new_id()).id
            return
        if self.lost_since is None:
            self._detected(found)
        if step is Step.RESTORE:
            self._restore()
        elif step is Step.FOLLOW:
            assert found is not None
            self._settled(found.id)

    def _detected(self, found: Epoch | None) -> None:
        self.lost_since = self._clock()
        self.losses += 1
        now = found.id if found is not None else "none"
        logger.error(
            "tenant-gate: the store lost its data (epoch %s -> %s: restarted empty, flushed "
            "or failed over); paused tenants and held work are restored from what the "
            "workers remember, and every tenant is asked from the State API again",
            self.remembered,
            now,
        )
        self.states.cache.reset(enabled=self.states.cache.enabled)
        signals.store_lost.send(
            sender=self.states.store.prefix, lost_epoch=self.remembered, epoch=now
        )

    def _restore(self) -> None:
        mirror = self.mirror
        paused = dict(mirror.paused) if mirror is not None else {}
        held = dict(mirror.held) if mirror is not None else {}
        now = self._clock()
        found = self._tenants_holding()
        for ctx in found:
            held.setdefault(ctx, now)
            if ctx not in paused and (mirror is None or ctx not in mirror.held):
                paused[ctx] = Pause(now, "manual", FOUND_HELD)
        for ctx in paused:  # swept anyway; listed in case the broker cannot list queues
            held.setdefault(ctx, paused[ctx].at)
        restored = {
            ctx: Pause(p.at, p.by, p.reason if p.reason == FOUND_HELD else _restored(p.reason))
            for ctx, p in paused.items()
        }
        pauses, indexed = self.epochs.restore(restored, held)
        epoch = self.epochs.mark_restored(self._new_id())
        logger.warning(
            "tenant-gate: store restored: %d pause(s) written back (%d by hand), %d tenant "
            "queue(s) put back in the held index (%d found in the broker)",
            pauses,
            sum(1 for p in restored.values() if p.by == "manual"),
            indexed,
            len(found),
        )
        self._settled(epoch.id)

    def _tenants_holding(self) -> list[str]:
        if not isinstance(self.held_queues, ListsTenants):
            return []  # RabbitMQ lists no queues: the mirrors are all there is
        return self.held_queues.tenants()

    def _settled(self, epoch: str) -> None:
        self.remembered = epoch
        self.lost_since = None
        self.mirror = None  # taken again at the next tick, from the restored store
        self.states.cache.reset(enabled=self.states.cache.enabled)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()


def _restored(reason: str) -> str:
    return f"{reason} ({RESTORED})" if reason else RESTORED


def _stand_in(ctx: str, until: float) -> TenantRecord:
    """A record that holds (paused, whatever the verdicts), until *until*, written nowhere."""
    state = TenantState(ctx, State.RUNNING, is_running=True)
    return TenantRecord(
        ctx,
        state=state,
        fresh_until=until,
        check_after=until,
        paused=True,
        pause_reason=WAITING,
        paused_by="gate",
    )


_INSTANCES: weakref.WeakSet[StoreGuard] = weakref.WeakSet()


def _reset_after_fork() -> None:
    for instance in list(_INSTANCES):
        instance._after_fork()


os.register_at_fork(after_in_child=_reset_after_fork)
