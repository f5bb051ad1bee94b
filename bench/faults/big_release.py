"""A release of 1,000,000 held tasks on a Redis broker (10,000 with --quick), while
another client PINGs the same Redis.

Its own throw-away redis-server (broker and store): never the machine's shared one,
which this fills with about a gigabyte. A worker holds 100 tasks of a paused tenant;
their held messages are copied in the tenant queue until it holds COUNT (the release
moves messages as they are, whatever their task ids); then ``gate.resume`` releases
them all (in chunks, see ``io/broker/redis_release.py``). Meanwhile another process
(``bench.redis_release_latency.Pinger``: not a thread of this one, whose releasing
would hold the GIL against it) sends a PING, waits for its answer, waits a
millisecond, and so on: each PING's latency is what a client of that Redis waits for
an answer while the release runs. (A client that must send one command every
millisecond whatever happens does not keep up: it gets one command in between two
chunks, about 350 a second; measured once with an open schedule, p50 2.1 s behind.)

Figure: p99 of the PINGs from the call of ``resume`` until every message is back in
the work queue; baseline: p99 of the same PINGs on the same server with nothing else
to do, just before. Goal: p99 < 50 ms. A second row says whether ``resume`` returned
the count or raised (what its caller saw).
"""

from __future__ import annotations

import threading
import time

import redis

from bench.faults.procs import wait_for
from bench.faults.world import World
from bench.redis_release_latency import Pinger
from bench.results import Result
from celery_tenant_gate.testing import EmbeddedRedis

CTX = "Cust701"
SEED = 100
GOAL_MS = 50.0
#: Never asked: the tenant's state is stored (127.0.0.1, a closed port).
NO_API = "http://127.0.0.1:9/api/state"


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

        error = ""
        released = 0
        with Pinger(server.url) as idle_pings:
            threading.Event().wait(1.0)  # the baseline: a second of nothing else
        with Pinger(server.url) as busy_pings:
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
        assert idle_pings.spread is not None and busy_pings.spread is not None
        idle, during = idle_pings.spread, busy_pings.spread
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
