"""``kill -9`` of the worker, 12 times (2 with --quick), with ``task_acks_late``, on
each broker.

Two running tenants and one paused by hand publish TASKS tasks together (bodies of
5 ms). A worker (prefork, 2 processes) is started, and once it has run STEP more
bodies (the paused tenant's tasks are being held meanwhile), it and its pool get
SIGKILL after a random 0-200 ms; then the next one is started. A last
worker then drains everything: the paused tenant is resumed once the running tenants'
tasks have all run. On Redis a killed worker's unacknowledged tasks come back after
the transport's visibility timeout (3 s here).

Measured, per task (tenant, sequence number): lost (never ran) and duplicated (ran
more than once), and bodies of the paused tenant before its resume. Lost on Redis may
be kombu's own window (a message popped and not yet recorded as unacknowledged when
the worker died, kombu#305), which no gate can close; RabbitMQ has none.
"""

from __future__ import annotations

import random
import re
import threading
import time
from typing import Any

import redis

from bench.faults.procs import StateAPI
from bench.faults.world import Tally, World
from bench.results import Result

RUNNING = ["Cust601", "Cust602"]
PAUSED = "Cust603"
BUSY_MS = 5
#: No body for this long: what is missing is lost (the visibility timeout is 3 s, and
#: kombu looks for what to restore every second).
QUIET = 6.0


class Deliveries:
    """Redis broker: the task ids kombu recorded as delivered (``HSET unacked``), read
    with ``MONITOR``. A lost task whose id was never recorded was lost in kombu's own
    window (popped, then the worker died before recording it): kombu#305."""

    _ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

    def __init__(self, url: str) -> None:
        self.ids: set[str] = set()
        self._client = redis.Redis.from_url(url)
        self._monitor: Any = self._client.monitor().__enter__()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="tgfault-monitor", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            command = str(self._monitor.next_command().get("command", ""))
            if command.upper().startswith("HSET UNACKED "):
                self.ids.update(self._ID.findall(command))

    def close(self) -> None:
        self._stop.set()
        self._client.ping()  # one more command, so that the reader wakes up
        self._thread.join(10)
        self._monitor.__exit__(None, None, None)
        self._client.close()


def run(broker: str, ledger_url: str, quick: bool) -> list[Result]:
    kills, per_tenant, step = (2, 150, 40) if quick else (12, 1000, 60)
    api = StateAPI()
    try:
        for ctx in [*RUNNING, PAUSED]:
            api.set_state(ctx, "Running")
        with World(broker, ledger_url, ledger_url, api.url, TGF_VISIBILITY="3") as world:
            deliveries = None if world.is_amqp else Deliveries(broker)
            try:
                return _measure(world, kills, per_tenant, step, deliveries)
            finally:
                if deliveries is not None:
                    deliveries.close()
    finally:
        api.stop()


def _measure(
    world: World, kills: int, per_tenant: int, step: int, deliveries: Deliveries | None
) -> list[Result]:
    ledger, gate = world.ledger, world.gate
    tenants = [*RUNNING, PAUSED]
    for ctx in tenants:
        world.learn(ctx)
    gate.pause(PAUSED, "fault bench: paused by hand")
    world.publish(((ctx, seq) for seq in range(1, per_tenant + 1) for ctx in tenants), BUSY_MS)
    rng = random.Random(9)
    for _ in range(kills):
        worker = world.worker()
        seen = len(ledger.rows)
        ledger.wait(lambda seen=seen: len(ledger.rows) >= seen + step, 30, worker.check)
        ledger.wait(lambda: False, rng.uniform(0.0, 0.2))  # the kill lands anywhere
        killed = worker.kill9()
    last = world.worker()
    n_running = len(RUNNING) * per_tenant
    # Every running tenant's task, those a killed worker left unacknowledged too.
    ledger.settle(
        lambda: sum(ledger.distinct(c) for c in RUNNING) >= n_running, QUIET, 120, last.check
    )
    if not world.is_amqp:  # duplicates come back after the visibility timeout
        ledger.wait(lambda: time.time() > killed + QUIET, QUIET, last.check)
    early = len(ledger.of(PAUSED))
    released = gate.resume(PAUSED)
    ledger.settle(lambda: ledger.distinct(PAUSED) >= per_tenant, QUIET, 90, last.check)
    published = {ctx: range(1, per_tenant + 1) for ctx in tenants}
    tally = Tally.of(published, ledger.rows)
    ran = {(r.ctx, r.seq) for r in ledger.rows}
    lost_ids = {world.ids[ctx, seq] for ctx, seqs in published.items() for seq in seqs} - {
        world.ids[key] for key in ran if key in world.ids
    }
    where = ""
    if deliveries is not None and lost_ids:
        never = len(lost_ids - deliveries.ids)
        where = f" ({never} of them never recorded as delivered: kombu's window, kombu#305)"
    name = f"faults.kill9.{world.broker_name}"
    print(
        f"  kill9 {world.broker_name}: {kills} workers killed with SIGKILL mid-work; "
        f"{tally.text()}{where}; {early} bodies of the paused tenant before its resume "
        f"(then {released} released)",
        flush=True,
    )
    bad = tally.lost + early
    return [
        Result(
            name=f"{name}.lost_or_paused_bodies",
            figure=float(bad),
            unit="tasks",
            baseline_name=f"tasks published, {kills} kills{where}",
            baseline=float(tally.published),
            ratio=bad / tally.published,
            goal="0 lost, 0 bodies of the paused tenant",
            met=bad == 0,
        ),
        Result(
            name=f"{name}.duplicates",
            figure=float(tally.duplicates),
            unit="tasks",
            baseline_name=f"tasks published, {kills} kills (informational: counted)",
            baseline=float(tally.published),
            ratio=tally.duplicates / tally.published,
            goal="counted (informational)",
            met=True,
        ),
    ]
