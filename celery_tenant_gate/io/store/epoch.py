"""The store's epoch, and what a worker remembers of the store to write back when
the store loses its data.

A Redis that restarts empty (no persistence), is flushed, or fails over to a replica
that is behind forgets every pause and the index of held tenants. The key
``{p}:epoch`` names the store's life: a random id, set by the first process that finds
none. Each process remembers the id it saw; an id gone or changed means the store
lost its data since (what is done then: :mod:`celery_tenant_gate.gate.storeloss`).

Keys (``{p}`` is ``tenant_gate_key_prefix``)::

    {p}:epoch   string  "<id>", or "<id> restored" once a worker wrote back what it
                        remembered of the store before the loss
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from celery_tenant_gate.io.lua import lua_script

from .state_store import Pause, StateStore

__all__ = ["Epoch", "Mirror", "Pause", "StoreEpoch"]

_RESTORE_PAUSE = lua_script(__package__, "restore_pause")
_MARK_RESTORED = lua_script(__package__, "mark_restored")
_RESTORED = " restored"


@dataclass(frozen=True)
class Epoch:
    """The store's epoch as read."""

    id: str
    #: A worker wrote back what it remembered after the loss that began this epoch.
    restored: bool = False

    @classmethod
    def parse(cls, raw: Any) -> Epoch | None:
        if raw is None:
            return None
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        return cls(text.removesuffix(_RESTORED), text.endswith(_RESTORED))


@dataclass(frozen=True)
class Mirror:
    """What one process remembers of the store: the paused tenants and the index of
    tenants with held work, as of epoch *epoch*, taken in process *pid*."""

    epoch: str
    paused: Mapping[str, Pause]
    held: Mapping[str, float]
    pid: int


class StoreEpoch:
    """Reads and writes the epoch; takes and writes back a :class:`Mirror`."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.key = f"{store.prefix}:epoch"
        self._restore_pause = store.client.register_script(_RESTORE_PAUSE)
        self._mark_restored = store.client.register_script(_MARK_RESTORED)

    def read(self) -> Epoch | None:
        return Epoch.parse(self.store.client.get(self.key))

    def claim(self, new_id: str) -> Epoch:
        """The epoch, set to *new_id* if the store has none."""
        pipe = self.store.client.pipeline(transaction=True)
        pipe.set(self.key, new_id, nx=True)
        pipe.get(self.key)
        epoch = Epoch.parse(pipe.execute()[1])
        assert epoch is not None  # just set, in the same transaction
        return epoch

    def mark_restored(self, new_id: str) -> Epoch:
        """Say the store's data was written back (creating the epoch as *new_id*)."""
        epoch = Epoch.parse(self._mark_restored(keys=[self.key], args=[new_id]))
        assert epoch is not None
        return epoch

    def snapshot(self, epoch: str, previous: Mirror | None = None) -> Mirror | None:
        """The paused tenants and the held index, if the store's epoch is still
        *epoch* (else None: what it holds now is not what this process knew)."""
        store = self.store
        pipe = store.client.pipeline(transaction=True)
        pipe.get(self.key)
        pipe.zrange(store.paused_key, 0, -1, withscores=True)
        pipe.zrange(store.held_key, 0, -1, withscores=True)
        raw_epoch, raw_paused, raw_held = pipe.execute()
        found = Epoch.parse(raw_epoch)
        if found is None or found.id != epoch:
            return None
        paused_at = {_text(ctx): float(at) for ctx, at in raw_paused}
        known = previous.paused if previous is not None and previous.epoch == epoch else {}
        paused = {
            ctx: known[ctx] for ctx, at in paused_at.items() if ctx in known and known[ctx].at == at
        }
        new = [ctx for ctx in paused_at if ctx not in paused]
        if new:  # who paused it and why: read once a pause, not every sweep
            pipe = store.client.pipeline(transaction=False)
            for ctx in new:
                pipe.hmget(store.key(ctx), ["paused_by", "pause_reason"])
            for ctx, (by, reason) in zip(new, pipe.execute(), strict=True):
                # Unknown (the record went meanwhile): taken as by hand, to fail closed.
                paused[ctx] = Pause(paused_at[ctx], _text(by or b"manual"), _text(reason or b""))
        held = {_text(ctx): float(at) for ctx, at in raw_held}
        return Mirror(epoch, paused, held, os.getpid())

    def restore(self, paused: Mapping[str, Pause], held: Mapping[str, float]) -> tuple[int, int]:
        """Write back *paused* (see ``lua/restore_pause.lua``) and the held index
        (entries the store has already are kept). Returns how many of each were
        written."""
        store = self.store
        pipe = store.client.pipeline(transaction=False)
        for ctx, pause in paused.items():
            self._restore_pause(
                keys=[store.key(ctx), store.paused_key],
                args=[repr(pause.at), pause.reason, pause.by, store.channel, ctx],
                client=pipe,
            )
        if held:
            pipe.zadd(store.held_key, dict(held), nx=True)
        replies = pipe.execute()
        pauses = sum(int(reply) for reply in replies[: len(paused)])
        return pauses, int(replies[-1]) if held else 0


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
