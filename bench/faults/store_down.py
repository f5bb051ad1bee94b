"""The store (the tenant-state Redis) down for OUTAGE seconds, while a paused tenant's
50 tasks and a running tenant's 150 wait in the broker (RabbitMQ in the issue; the
Redis broker too, on a Redis of its own).

The store is a redis-server of the scenario's own, saved on the way down and started
again on the same port (a persistent Redis restarted). One worker (prefork, 2
processes, ``task_acks_late``); a warm-up task of each tenant puts their states in
its cache. Two rounds on the same worker, each publishing the paused tenant's 50 tasks
and then the running tenant's 150:

- baseline: the store up;
- fault: the store goes down just before publishing, and comes back after OUTAGE
  seconds (or as soon as the running tenant has drained, if later: never).

Measured: the running tenant's drain rate (from the start of publishing to its last
body) in both rounds; the paused tenant's bodies (0 until it is resumed at the end);
how many times each of the paused tenant's messages went back to the broker because
the gate could not screen it (the worker's "back to the broker" log lines; a message
the gate keeps in the worker until the store answers is not redelivered); at the end the
paused tenant is resumed and every task must run: lost and duplicated are counted.
"""

from __future__ import annotations

import re
import statistics
import time
from collections import Counter

from bench.faults.procs import StateAPI, StoreRedis, wait_for
from bench.faults.world import Tally, World
from bench.results import Result

RUNNING, PAUSED = "Cust301", "Cust302"
N_RUNNING, N_PAUSED = 150, 50
RATE_GOAL = 0.9
_REQUEUED = re.compile(r"task ([0-9a-f-]+) could not be screened .*back to the broker")


def _round(world: World, n: int, t_limit: float) -> tuple[float, float, bool]:
    """Publish the paused tenant's 50, then the running one's 150 (round *n*: sequence
    numbers after the previous rounds'); returns (start, the running tenant's last
    body, drained)."""
    ledger = world.ledger
    tasks = [(PAUSED, 1 + n * N_PAUSED + i) for i in range(N_PAUSED)]
    tasks += [(RUNNING, 1 + n * N_RUNNING + i) for i in range(N_RUNNING)]
    t0 = world.publish(tasks)
    drained = ledger.wait(
        lambda: ledger.count([RUNNING], since=t0) >= N_RUNNING, t_limit, world.check
    )
    last = max((r.at for r in ledger.of(RUNNING, since=t0)), default=time.time())
    return t0, (last if drained else time.time()), drained


def run(broker: str, ledger_url: str, quick: bool) -> list[Result]:
    outage = 2.0 if quick else 10.0
    api = StateAPI()
    store = StoreRedis().start()
    try:
        for ctx in (RUNNING, PAUSED):
            api.set_state(ctx, "Running")
        with World(broker, ledger_url, store.url, api.url) as world:
            return _measure(world, store, outage)
    finally:
        store.stop()
        api.stop()


def _measure(world: World, store: StoreRedis, outage: float) -> list[Result]:
    ledger, gate = world.ledger, world.gate
    for ctx in (RUNNING, PAUSED):
        world.learn(ctx)
    gate.pause(PAUSED, "fault bench: paused by hand")
    world.worker()
    world.publish([(RUNNING, 0), (PAUSED, 0)])
    ledger.wait(lambda: ledger.count([RUNNING]) >= 1, 30, world.check)
    wait_for(lambda: world.held(PAUSED) >= 1, 30, "the warm-up hold", world.check)

    t0, end, _ = _round(world, 0, 60)
    base = N_RUNNING / (end - t0)
    wait_for(lambda: world.held(PAUSED) >= 1 + N_PAUSED, 60, "the baseline holds", world.check)
    log_before = len(world.worker_logs())

    store.down(keep_data=True)
    try:
        t1, end, drained = _round(world, 1, outage)
        ledger.wait(lambda: time.time() >= t1 + outage, outage, world.check)
    finally:
        back = time.time()
        store.up()
    if not drained:
        drained = ledger.wait(
            lambda: ledger.count([RUNNING], since=t1) >= N_RUNNING, 60, world.check
        )
        end = max((r.at for r in ledger.of(RUNNING, since=t1)), default=time.time())
    rate = N_RUNNING / (end - t1) if drained else ledger.count([RUNNING], since=t1) / (end - t1)
    held_all = 1 + 2 * N_PAUSED
    wait_for(lambda: world.held(PAUSED) >= held_all, 60, "the holds after the outage", world.check)
    requeues = Counter(_REQUEUED.findall(world.worker_logs()[log_before:]))

    early = len(ledger.of(PAUSED))
    resumed = time.time()
    gate.resume(PAUSED)
    published = {RUNNING: range(2 * N_RUNNING + 1), PAUSED: range(held_all)}
    total = sum(len(s) for s in published.values())
    ledger.settle(lambda: sum(ledger.distinct(c) for c in published) >= total, 5, 60, world.check)
    ledger.wait(lambda: False, 0.3)  # duplicates still on their way
    tally = Tally.of(published, ledger.rows)
    per_message = [requeues.get(i, 0) for i in requeues] or [0]
    mean_requeues = sum(requeues.values()) / N_PAUSED
    name = f"faults.store_down.{world.broker_name}"
    print(
        f"  store_down {world.broker_name}: running tenant {rate:.1f} tasks/s with the store "
        f"down {back - t1:.1f} s, {base:.1f} without; paused tenant: {early} bodies before "
        f"its resume ({resumed - t1:.1f} s after the outage began), its messages requeued "
        f"{sum(requeues.values())} times ({len(requeues)} messages, mean "
        f"{mean_requeues:.1f}, median {statistics.median(per_message):.0f}, max "
        f"{max(per_message)}); {tally.text()}",
        flush=True,
    )
    bad = early + tally.lost
    return [
        Result(
            name=f"{name}.running_rate",
            figure=rate,
            unit="tasks/s",
            baseline_name="same tenants, same worker, store up (same run)",
            baseline=base,
            ratio=rate / base,
            goal=f">= {RATE_GOAL} of the no-fault rate",
            met=rate / base >= RATE_GOAL,
        ),
        Result(
            name=f"{name}.paused_bodies_or_lost",
            figure=float(bad),
            unit="tasks",
            baseline_name="tasks published",
            baseline=float(tally.published),
            ratio=bad / tally.published,
            goal="0 bodies of the paused tenant, 0 lost",
            met=bad == 0,
        ),
        Result(
            name=f"{name}.requeues_per_paused_message",
            figure=mean_requeues,
            unit="requeues",
            baseline_name=f"1 delivery (informational; max {max(per_message)} for one message)",
            baseline=1.0,
            ratio=mean_requeues,
            goal="reported (informational)",
            met=True,
        ),
    ]
