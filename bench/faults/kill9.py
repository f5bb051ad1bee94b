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
more than once), and bodies of the paused tenant before its resume. On Redis every
lost task is traced (:mod:`bench.faults.redis_trace`, the server's MONITOR): one popped
by BRPOP and never recorded as unacknowledged was lost in kombu's own window
(kombu#305), which no gate can close; any other loss is the gate's. RabbitMQ has no
such window: every loss there is the gate's.
"""

from __future__ import annotations

import random
import time

from bench.faults.procs import StateAPI
from bench.faults.redis_trace import Monitor, Verdict, verdict
from bench.faults.world import Tally, World
from bench.results import Result
from celery_tenant_gate.io.broker.redis_release import keys

RUNNING = ["Cust601", "Cust602"]
PAUSED = "Cust603"
BUSY_MS = 5
#: No body for this long: what is missing is lost (the visibility timeout is 3 s, and
#: kombu looks for what to restore every second).
QUIET = 6.0


def run(broker: str, ledger_url: str, quick: bool) -> list[Result]:
    kills, per_tenant, step = (2, 150, 40) if quick else (12, 1000, 60)
    api = StateAPI()
    try:
        for ctx in [*RUNNING, PAUSED]:
            api.set_state(ctx, "Running")
        with World(broker, ledger_url, ledger_url, api.url, TGF_VISIBILITY="3") as world:
            monitor = None if world.is_amqp else Monitor(broker)
            try:
                return _measure(world, kills, per_tenant, step, monitor)
            finally:
                if monitor is not None:
                    monitor.close()
    finally:
        api.stop()


def _measure(
    world: World, kills: int, per_tenant: int, step: int, monitor: Monitor | None
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
    verdicts = _verdicts(world, published, monitor)
    in_window = sum(1 for v in verdicts.values() if v.by_broker)
    by_gate = tally.lost - in_window
    name = f"faults.kill9.{world.broker_name}"
    print(
        f"  kill9 {world.broker_name}: {kills} workers killed with SIGKILL mid-work; "
        f"{tally.text()}; {early} bodies of the paused tenant before its resume "
        f"(then {released} released)",
        flush=True,
    )
    for (ctx, seq), found in sorted(verdicts.items()):
        owner = "kombu's window" if found.by_broker else "THE GATE'S"
        print(f"    lost {ctx}#{seq} ({world.ids[ctx, seq]}): {owner}: {found.why}", flush=True)
    window = (
        "lost tasks popped by BRPOP and never recorded as unacknowledged (kombu#305)"
        if monitor is not None
        else "RabbitMQ: no such window, every lost task counts as the gate's"
    )
    return [
        Result(
            name=f"{name}.lost_by_gate_or_paused_bodies",
            figure=float(by_gate + early),
            unit="tasks",
            baseline_name=f"tasks published, {kills} kills ({in_window} lost in kombu's window)",
            baseline=float(tally.published),
            ratio=(by_gate + early) / tally.published,
            goal="0 lost by the gate (traced with MONITOR on Redis), 0 bodies of the paused tenant",
            met=by_gate + early == 0,
        ),
        Result(
            name=f"{name}.lost_in_kombu_window",
            figure=float(in_window),
            unit="tasks",
            baseline_name=f"tasks published, {kills} kills ({window})",
            baseline=float(tally.published),
            ratio=in_window / tally.published,
            goal="counted (informational: kombu's Redis transport, no gate can close it)",
            met=True,
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


def _verdicts(
    world: World, published: dict[str, range], monitor: Monitor | None
) -> dict[tuple[str, int], Verdict]:
    """Who lost each task that never ran: on Redis from its trace; on RabbitMQ (no
    trace, no window) the gate."""
    ran = {(r.ctx, r.seq) for r in world.ledger.rows}
    lost = [(ctx, seq) for ctx, seqs in published.items() for seq in seqs if (ctx, seq) not in ran]
    if monitor is None:
        return {key: Verdict(False, "not run (RabbitMQ)") for key in lost}
    monitor.sync()
    left = monitor.whereabouts(world.ids[key] for key in lost)
    tenant_lists = {name for ctx in world.tenants for name in keys(world.gate.queue_for(ctx))}
    return {
        key: verdict(
            monitor.events(world.ids[key]),
            tenant_lists.__contains__,
            left.get(world.ids[key], ""),
        )
        for key in lost
    }
