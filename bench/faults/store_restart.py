"""The store (the tenant-state Redis) restarted empty, as a Redis without persistence
comes back, on each broker (the Redis broker on a Redis of its own).

Three tenants: M paused by hand (``gate.pause``), S paused by its state (the State
API and the store say Suspended: the gate holds its tasks and pauses it), R running.
One worker (prefork, 2 processes, ``task_acks_late``) holds 20 tasks of M and of S
and runs 20 of R. Then the store is shut down without saving and started again on
the same port, empty, and 150 more tasks of each tenant are published. After R's
have run, the scenario watches OBSERVE more seconds (sweeps included).

Measured: bodies of M and S that ran (goal 0: both are still paused, one by hand,
one by its state); held tasks stranded: left in a tenant queue that the store no
longer lists as held (no sweep will ever look at them) (goal 0); whether the workers
logged the event: a log line matching EVENT (goal at least one). At the end M and S
are resumed (S's state set to Running) and every task must run: lost is counted.
"""

from __future__ import annotations

import re
import time

from bench.faults.procs import StateAPI, StoreRedis, wait_for
from bench.faults.world import Tally, World
from bench.results import Result
from celery_tenant_gate.model.states import State

MANUAL, BY_STATE, RUNNING = "Cust501", "Cust502", "Cust503"
PAUSED = (MANUAL, BY_STATE)
BEFORE, AFTER = 20, 150
#: What a worker's log line must say for the event to count as logged.
EVENT = re.compile(r"tenant-gate.*(empty|restart|flushed|forgot|data (was )?lost)", re.I)


def run(broker: str, ledger_url: str, quick: bool) -> list[Result]:
    observe = 2.5 if quick else 6.0
    api = StateAPI()
    store = StoreRedis().start()
    try:
        api.set_state(MANUAL, "Running")
        api.set_state(BY_STATE, "Suspended")
        api.set_state(RUNNING, "Running")
        with World(broker, ledger_url, store.url, api.url) as world:
            return _measure(world, store, api, observe)
    finally:
        store.stop()
        api.stop()


def _measure(world: World, store: StoreRedis, api: StateAPI, observe: float) -> list[Result]:
    ledger, gate = world.ledger, world.gate
    world.learn(MANUAL)
    world.learn(RUNNING)
    world.learn(BY_STATE, State.SUSPENDED)
    gate.pause(MANUAL, "fault bench: paused by hand")
    worker = world.worker()
    world.publish((ctx, seq) for seq in range(1, BEFORE + 1) for ctx in (*PAUSED, RUNNING))
    ledger.wait(lambda: ledger.count([RUNNING]) >= BEFORE, 30, world.check)
    for ctx in PAUSED:
        wait_for(lambda ctx=ctx: world.held(ctx) >= BEFORE, 30, f"{ctx}'s holds", world.check)
    held_before = sum(world.held(ctx) for ctx in PAUSED)
    log_before = len(world.worker_logs())

    store.down(keep_data=False)
    store.up()
    restarted = time.time()
    last = BEFORE + AFTER
    world.publish((ctx, seq) for seq in range(BEFORE + 1, last + 1) for ctx in (*PAUSED, RUNNING))
    ran_r = ledger.settle(lambda: ledger.distinct(RUNNING) >= last, 5, 60, world.check)
    ledger.wait(lambda: False, observe, world.check)
    early_by = {ctx: ledger.count([ctx]) for ctx in PAUSED}
    early = sum(early_by.values())
    observed = time.time() - restarted
    listed = world.gate.states.store.held_tenants()
    stranded = sum(world.held(ctx) for ctx in PAUSED if ctx not in listed)
    paused_now = sorted(set(PAUSED) & set(gate.paused()))
    events = [line for line in world.worker_logs()[log_before:].splitlines() if EVENT.search(line)]

    api.set_state(BY_STATE, "Running")
    world.learn(BY_STATE)
    resumed = {ctx: gate.resume(ctx) for ctx in PAUSED}
    published = {ctx: range(1, last + 1) for ctx in (*PAUSED, RUNNING)}
    total = 3 * last
    ledger.settle(lambda: sum(ledger.distinct(c) for c in published) >= total, 5, 60, worker.check)
    ledger.wait(lambda: False, 0.3)  # duplicates still on their way
    tally = Tally.of(published, ledger.rows)
    name = f"faults.store_restart.{world.broker_name}"
    print(
        f"  store_restart {world.broker_name}: after the empty restart "
        f"{early_by[MANUAL]} bodies of {MANUAL} (paused by hand), "
        f"{early_by[BY_STATE]} of {BY_STATE} (paused by state) ran in {observed:.1f} s; "
        f"running tenant {'drained' if ran_r else 'NOT drained'}; "
        f"paused now: {paused_now or 'none'}; {stranded} of {held_before} held tasks stranded "
        f"(queues the store does not list); {len(events)} log line(s) about it; "
        f"resume released {resumed}; {tally.text()}",
        flush=True,
    )
    for line in events[:3]:
        print(f"    {line[:200]}")
    return [
        Result(
            name=f"{name}.paused_bodies",
            figure=float(early),
            unit="tasks",
            baseline_name="tasks of the paused tenants published after the restart",
            baseline=float(2 * AFTER),
            ratio=early / (2 * AFTER),
            goal="0 bodies of a paused tenant",
            met=early == 0,
        ),
        Result(
            name=f"{name}.stranded",
            figure=float(stranded),
            unit="tasks",
            baseline_name="tasks held before the restart",
            baseline=float(held_before),
            ratio=stranded / held_before,
            goal="0 held tasks stranded",
            met=stranded == 0,
        ),
        Result(
            name=f"{name}.event_logged",
            figure=float(len(events)),
            unit="lines",
            baseline_name="goal bound, no same-run baseline (1 line)",
            baseline=1.0,
            ratio=float(len(events)),
            goal=f"the restart logged (a line matching {EVENT.pattern!r})",
            met=len(events) >= 1,
        ),
        Result(
            name=f"{name}.lost",
            figure=float(tally.lost),
            unit="tasks",
            baseline_name=f"tasks published ({tally.duplicates} duplicated)",
            baseline=float(tally.published),
            ratio=tally.lost / tally.published,
            goal="0 lost",
            met=tally.lost == 0,
        ),
    ]
