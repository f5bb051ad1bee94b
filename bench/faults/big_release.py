"""A release of 1,000,000 held tasks on a Redis broker (10,000 with --quick), while
another client PINGs the same Redis on a schedule.

Its own throw-away redis-server (broker and store): never the machine's shared one,
which this fills with about a gigabyte. A worker holds 100 tasks of a paused tenant;
their held messages are copied in the tenant queue until it holds COUNT (the release
moves messages as they are, whatever their task ids); then ``gate.resume`` releases
them all (one Lua script on Redis). Meanwhile a thread sends a PING every
millisecond on a connection of its own, latency counted from when each was due, so
that a Redis busy for a second is 1,000 late PINGs, not one; a PING answered BUSY
(Redis runs a script past its time limit) is sent again until answered.

Figure: p99 of the PINGs due from the call of ``resume`` until every message is back
in the work queue (the script may outlive the call: redis-py gives up on an answer
after 5 s, and Redis goes on); baseline: p99 of the same schedule on the same server
with nothing else to do, just before. Goal: p99 < 50 ms. A second row says whether
``resume`` returned the count or raised (what its caller saw).
"""

from __future__ import annotations

import threading
import time

import redis

from bench.faults.procs import wait_for
from bench.faults.world import World
from bench.results import Result, Spread
from celery_tenant_gate.testing import EmbeddedRedis

CTX = "Cust701"
SEED = 100
GOAL_MS = 50.0
PERIOD = 0.001
#: Never asked: the tenant's state is stored (127.0.0.1, a closed port).
NO_API = "http://127.0.0.1:9/api/state"


class Pinger(threading.Thread):
    """PINGs every PERIOD s; records (due, latency) of each."""

    def __init__(self, url: str) -> None:
        super().__init__(name="tgfault-pinger", daemon=True)
        self.client = redis.Redis.from_url(url)
        self.samples: list[tuple[float, float]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        start = time.perf_counter()
        i = 0
        while not self.stopped.is_set():
            due = start + i * PERIOD
            i += 1
            ahead = due - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)  # the schedule, not a wait for anything
            while not self.stopped.is_set():
                try:
                    self.client.ping()
                    break
                except redis.TimeoutError:
                    continue  # no answer in redis-py's 5 s: ask again
                except (redis.ResponseError, redis.BusyLoadingError):
                    time.sleep(PERIOD)  # BUSY: a script runs past its time limit
            self.samples.append((due, time.perf_counter() - due))

    def last_due(self) -> float:
        return self.samples[-1][0] if self.samples else 0.0

    def between(self, begin: float, end: float) -> list[float]:
        return [lat for due, lat in self.samples if begin <= due <= end]

    def close(self) -> None:
        self.stopped.set()
        self.join(30)
        self.client.close()


def _fill(world: World, count: int) -> int:
    """Copy the held messages in the tenant queue until it holds *count*."""
    queue = world.gate.queue_for(CTX)
    raw = world.redis.lrange(queue, 0, -1)
    pipe = world.redis.pipeline(transaction=False)
    have = len(raw)
    while have < count:
        chunk = raw[: min(len(raw), count - have)]
        pipe.rpush(queue, *chunk)
        have += len(chunk)
        if len(pipe) >= 100:
            pipe.execute()
    pipe.execute()
    return len(raw[0]) if raw else 0


def _back(client: redis.Redis, queue: str) -> int:
    """Messages in *queue*, or -1 while Redis does not answer (BUSY, timed out)."""
    try:
        return int(client.llen(queue))
    except (redis.TimeoutError, redis.ResponseError, redis.BusyLoadingError):
        return -1


def run(quick: bool) -> list[Result]:
    count = 10_000 if quick else 1_000_000
    with EmbeddedRedis() as server, World(server.url, server.url, server.url, NO_API) as world:
        world.learn(CTX)
        world.gate.pause(CTX, "fault bench: paused by hand")
        worker = world.worker()
        world.publish((CTX, seq) for seq in range(SEED))
        wait_for(lambda: world.held(CTX) >= SEED, 60, "the holds", world.check)
        worker.stop()
        size = _fill(world, count)
        if world.held(CTX) != count:
            raise RuntimeError(f"{world.held(CTX)} held, not {count}")

        pinger = Pinger(server.url)
        pinger.start()
        error = ""
        released = 0
        try:
            idle_from = time.perf_counter()
            pinger.stopped.wait(1.0)  # the baseline: a second of nothing else
            idle_to = time.perf_counter()
            began = time.perf_counter()
            try:
                released = world.gate.resume(CTX)
            except Exception as exc:  # what a caller of resume() would see
                error = f"{type(exc).__name__}: {str(exc)[:120]}"
            # Done when every message is back (the script may outlive the call).
            wait_for(
                lambda: _back(world.redis, world.work_queue) == count,
                60 + count / 10_000,
                "the released tasks in the work queue",
            )
            ended = time.perf_counter()
            # PINGs that fell due while Redis was busy go out late, one after another:
            # wait until the schedule has caught up past the end.
            wait_for(lambda: pinger.last_due() > ended + 0.2, 60, "the PINGs to catch up")
        finally:
            pinger.close()
        idle = Spread.of(pinger.between(idle_from, idle_to))
        during = Spread.of(pinger.between(began, ended + 0.2))
        world.redis.delete(world.work_queue)  # not to be run; a big DEL, before clean-up
    print(
        f"  big_release redis: {count} held tasks ({size}-byte messages) back in the work "
        f"queue {ended - began:.2f} s after resume() was called; resume() "
        f"{'returned ' + str(released) if not error else 'raised ' + error}; concurrent PING "
        f"during it: {during.ms()}; idle: {idle.ms()}",
        flush=True,
    )
    name = f"faults.big_release.redis.{count}"
    return [
        Result(
            name=f"{name}.ping_p99",
            figure=during.p99 * 1e3,
            unit="ms",
            baseline_name="PING p99 on the same server, idle, same schedule (same run)",
            baseline=idle.p99 * 1e3,
            ratio=during.p99 / idle.p99,
            goal=f"p99 < {GOAL_MS:.0f} ms throughout the release",
            met=during.p99 * 1e3 < GOAL_MS,
        ),
        Result(
            name=f"{name}.resume_reported",
            figure=float(released),
            unit="tasks",
            baseline_name="held tasks (all back in the work queue either way)",
            baseline=float(count),
            ratio=released / count,
            goal="resume() returns the count (raises nothing)",
            met=released == count and not error,
        ),
    ]
