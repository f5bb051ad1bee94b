"""``kill -9`` of the worker that is releasing a tenant's 10,000 held tasks, on each
broker.

Two workers (prefork, 2 processes, ``task_acks_late``): W1 sweeps every 0.2 s, W2 at
the package's 2 s. The tenant's stored state says Suspended: its 10,000 tasks are held
(paused by the gate). Then W2 is frozen (SIGSTOP, so that W1 is surely the one that
sweeps) and the tenant's state is stored as Running: W1's next sweep resumes it and
releases its held tasks (the tenant stays paused until they are released). As soon as
a tenth of the tenant queue is gone (a Redis release goes a chunk of 250 at a time),
W1 and its pool are killed with SIGKILL and W2 is thawed at once; 200 tasks of the
tenant are published (after the resume, with higher sequence numbers). W2 takes the
release over once W1's sweep and move locks lapse (``tenant_gate_lock_lease``), at
its next sweep (every 2 s, the package's default).

Measured: seconds from the kill until the tenant queue is empty (every held task
released: the tenant flows again), goal <= 5 s; when every task has run, lost and
duplicated; and how many of the tasks published after the resume started before the
last held one started (out of order; goal 0).
"""

from __future__ import annotations

import time

from bench.faults.procs import StateAPI, wait_for
from bench.faults.world import Tally, World
from bench.results import Result
from celery_tenant_gate.model.states import State

CTX = "Cust401"
FLOW_GOAL_S = 5.0


def run(broker: str, ledger_url: str, quick: bool) -> list[Result]:
    held_n, after_n = (500, 50) if quick else (10_000, 200)
    env = {"TGF_VISIBILITY": "5"}
    api = StateAPI()
    try:
        api.set_state(CTX, "Suspended")
        with World(broker, ledger_url, ledger_url, api.url, **env) as world:
            return _measure(world, held_n, after_n, 40.0 if quick else 60.0)
    finally:
        api.stop()


def _measure(world: World, held_n: int, after_n: int, limit: float) -> list[Result]:
    ledger, gate = world.ledger, world.gate
    queue = gate.queue_for(CTX)
    world.learn(CTX, State.SUSPENDED)
    w1 = world.worker(TGF_SWEEP="0.2")
    w2 = world.worker()
    world.publish((CTX, seq) for seq in range(1, held_n + 1))
    wait_for(lambda: world.held(CTX) >= held_n, 60 + held_n / 100, "the holds", world.check)
    if ledger.pull(0.01):
        raise RuntimeError("a task of the suspended tenant ran")

    w2.freeze()
    try:
        with world.counter(queue) as held:
            world.learn(CTX, State.RUNNING)  # W1's next sweep resumes and releases
            wait_for(lambda: held() <= held_n * 0.9, 30, "the release", world.check, 0.001)
            before_kill = held()
            killed_at = w1.kill9()
            after_kill = held()
    finally:
        w2.thaw()
    world.publish((CTX, seq) for seq in range(held_n + 1, held_n + after_n + 1))
    with world.counter(queue) as held:
        try:
            empty_at = wait_for(lambda: held() == 0, limit, "the tenant queue to empty", w2.check)
            flows = empty_at - killed_at
        except TimeoutError:
            flows = time.time() - killed_at
    total = held_n + after_n
    ran_all = ledger.settle(
        lambda: ledger.distinct(CTX) >= total, 8.0, limit + total / 200, w2.check
    )
    ledger.wait(lambda: False, 0.5)  # duplicates still on their way
    tally = Tally.of({CTX: range(1, total + 1)}, ledger.rows)
    first: dict[int, float] = {}
    for r in ledger.of(CTX):
        first[r.seq] = min(first.get(r.seq, r.at), r.at)
    last_held = max((at for seq, at in first.items() if seq <= held_n), default=0.0)
    leads = [last_held - at for seq, at in first.items() if seq > held_n and at < last_held]
    early = len(leads)
    name = f"faults.kill_release.{world.broker_name}"
    print(
        f"  kill_release {world.broker_name}: {before_kill} of {held_n} ready in the tenant "
        f"queue just before the kill, {after_kill} just after; queue empty {flows:.2f} s "
        f"after the kill; "
        f"{'all ran' if ran_all else 'NOT all ran'}: {tally.text()}; {early} of {after_n} "
        f"tasks published after the resume started before the last held one"
        f"{f' (by at most {max(leads) * 1000:.0f} ms)' if leads else ''}",
        flush=True,
    )
    return [
        Result(
            name=f"{name}.flows_again_after_kill",
            figure=flows,
            unit="s",
            baseline_name=f"goal bound, no same-run baseline ({FLOW_GOAL_S:.0f} s)",
            baseline=FLOW_GOAL_S,
            ratio=flows / FLOW_GOAL_S,
            goal=f"tenant queue empty <= {FLOW_GOAL_S:.0f} s after the kill",
            met=flows <= FLOW_GOAL_S,
        ),
        Result(
            name=f"{name}.lost",
            figure=float(tally.lost),
            unit="tasks",
            baseline_name="tasks published",
            baseline=float(tally.published),
            ratio=tally.lost / tally.published,
            goal="0 lost",
            met=tally.lost == 0,
        ),
        Result(
            name=f"{name}.duplicates",
            figure=float(tally.duplicates),
            unit="tasks",
            baseline_name="tasks published (informational: counted)",
            baseline=float(tally.published),
            ratio=tally.duplicates / tally.published,
            goal="counted (informational)",
            met=True,
        ),
        Result(
            name=f"{name}.out_of_order",
            figure=float(early),
            unit="tasks",
            baseline_name="tasks published after the resume",
            baseline=float(after_n),
            ratio=early / after_n,
            goal="0 started before the last held task",
            met=early == 0,
        ),
    ]
