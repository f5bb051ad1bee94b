"""Does a release of a huge tenant queue leave Redis answering everyone else?

Setup, in a throw-away ``redis-server`` (never a shared one, whatever ``--redis`` says:
a million held tasks take about 1.5 GB): one task is published by Celery and held by
the gate's own ``hold_message``, exactly as a worker holds it; then 1,000,000 copies
(20,000 with --quick), each with its own task id, are written straight into the
tenant queue with a pipeline.

Measured, by a separate process (so that nothing of this one's GIL is counted) that
sends ``PING`` on its own connection, one a millisecond:

- baseline: PING round trips with no release, for a few seconds;
- figure: PING round trips while ``RedisHeldQueues.release`` moves every held task
  back to its work queue (chunks of ``CHUNK`` messages, one script run each).

Goal: PING p99 under 50 ms during the release. Also reported: the release's total
time against a bare Lua LMOVE of the same messages in chunks of the same size, and
that every task came back exactly once, in publish order.
"""

from __future__ import annotations

import multiprocessing
import re
import time
from multiprocessing.connection import Connection as Pipe
from multiprocessing.synchronize import Event
from typing import Any

import redis
from celery import Celery
from kombu import Connection

from bench.results import Result, Spread
from celery_tenant_gate.io.broker.holding import hold_message
from celery_tenant_gate.io.broker.redis_held import RedisHeldQueues
from celery_tenant_gate.io.broker.redis_release import CHUNK
from celery_tenant_gate.model.carrier import TENANT_HEADER
from celery_tenant_gate.testing import EmbeddedRedis

GOAL_MS = 50.0
#: The whole release of a million, chunk after chunk (the move lock is renewed while
#: it runs): a minute.
GOAL_SECONDS = 60.0
BASELINE_SECONDS = 3.0
PING_EVERY = 0.001
WORK, TENANT = "work", "tenant.Cust1"
_ID = re.compile(rb'"id": "(\d{8})-0000-4000-8000-000000000000"')
_PLACE = b"<task id>"

_LMOVE_CHUNK = """
for i = 1, tonumber(ARGV[1]) do
    if not redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT') then return i - 1 end
end
return tonumber(ARGV[1])
"""


def _pings(url: str, ready: Event, stop: Event, out: Pipe) -> None:
    """In its own process: PING until *stop*, then send the round trips (seconds)."""
    client = redis.Redis.from_url(url)
    client.ping()
    ready.set()
    seconds: list[float] = []
    while not stop.is_set():
        started = time.perf_counter()
        client.ping()
        seconds.append(time.perf_counter() - started)
        time.sleep(PING_EVERY)  # a client, not a load generator: the machine has 2 cores
    out.send(seconds)


class Pinger:
    """A PING loop in another process, for as long as a ``with`` block runs."""

    def __init__(self, url: str) -> None:
        context = multiprocessing.get_context("spawn")
        self._ready, self._stop = context.Event(), context.Event()
        self._out, child = context.Pipe(duplex=False)
        args = (url, self._ready, self._stop, child)
        self._process = context.Process(target=_pings, args=args, daemon=True)
        self.spread: Spread | None = None

    def __enter__(self) -> Pinger:
        self._process.start()
        if not self._ready.wait(30):
            raise TimeoutError("the PING process did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        seconds: list[float] = self._out.recv()
        self._process.join(10)
        self.spread = Spread.of(seconds)


def _held_sample(url: str) -> bytes:
    """One task as the gate holds it: published by Celery, held by ``hold_message``."""
    app = Celery("tgbench", broker=url, set_as_current=False)
    app.conf.task_default_queue = WORK
    app.send_task("bench.work", args=["Cust1", 0], headers={TENANT_HEADER: "Cust1"})
    with Connection(url) as conn:
        message = conn.SimpleQueue(WORK).get(timeout=10)
        hold_message(app, message, TENANT)
        message.ack()
    client = redis.Redis.from_url(url)
    raw: bytes = client.lindex(TENANT, 0)
    client.delete(TENANT)
    task_id = re.search(rb'"id": "([0-9a-f-]{36})"', raw)
    assert task_id is not None, raw
    return raw.replace(task_id.group(1), _PLACE)


def _fill(client: redis.Redis, sample: bytes, count: int, batch: int = 1000) -> None:
    """*count* held tasks, oldest first (LPUSH, as kombu publishes), ids 0, 1, ..."""
    parts = sample.split(_PLACE)
    pipe = client.pipeline(transaction=False)
    for first in range(0, count, batch):
        ids = (
            b"%08d-0000-4000-8000-000000000000" % n for n in range(first, min(first + batch, count))
        )
        pipe.lpush(TENANT, *(task_id.join(parts) for task_id in ids))
        if len(pipe) >= 20:
            pipe.execute()
    pipe.execute()


def _in_order(client: redis.Redis, count: int, batch: int = 10_000) -> bool:
    """Whether the work queue holds ids 0..count-1, in the order a worker takes them."""
    if client.llen(WORK) != count:
        return False
    expected = 0
    for end in range(count, 0, -batch):
        raw: list[bytes] = client.lrange(WORK, max(0, end - batch), end - 1)
        for item in reversed(raw):
            found = _ID.search(item)
            if found is None or int(found.group(1)) != expected:
                return False
            expected += 1
    return expected == count


def _lmove_seconds(client: redis.Redis, count: int) -> float:
    """Seconds for a bare Lua LMOVE of the released messages, CHUNK a run."""
    move = client.register_script(_LMOVE_CHUNK)
    started = time.perf_counter()
    moved = 0
    while moved < count:
        step = int(move(keys=[WORK, "scratch"], args=[CHUNK]))
        if not step:
            break
        moved += step
    seconds = time.perf_counter() - started
    assert moved == count, f"LMOVE moved {moved} of {count}"
    return seconds


def _longest_run_ms(client: redis.Redis) -> float:
    """The longest command Redis ran since the latency monitor was reset (ms)."""
    latest: list[Any] = client.execute_command("LATENCY", "LATEST")
    return max(
        (float(event[3]) for event in latest if event[0] in {b"command", "command"}), default=0.0
    )


def run(redis_url: str | None = None, quick: bool = False) -> list[Result]:
    count = 20_000 if quick else 1_000_000
    with EmbeddedRedis() as server:  # never the shared Redis (see the module doc)
        client = redis.Redis.from_url(server.url)
        sample = _held_sample(server.url)
        _fill(client, sample, count)
        queues = RedisHeldQueues(client, WORK)
        assert queues.count(TENANT) == count
        with Pinger(server.url) as idle:
            time.sleep(1.0 if quick else BASELINE_SECONDS)
        client.config_set("latency-monitor-threshold", 1)
        client.execute_command("LATENCY", "RESET")
        with Pinger(server.url) as busy:
            started = time.perf_counter()
            moved = queues.release(TENANT)
            seconds = time.perf_counter() - started
        longest = _longest_run_ms(client)
        assert moved == count, f"released {moved} of {count}"
        assert queues.count(TENANT) == 0
        assert _in_order(client, count), "not every task came back once, in publish order"
        lmove = _lmove_seconds(client, count)
    assert idle.spread is not None and busy.spread is not None
    print(f"  PING with no release: {idle.spread.ms()}")
    print(f"  PING during the release: {busy.spread.ms()}")
    print(
        f"  release of {count:,} held tasks of {len(sample)} bytes: {seconds:.2f} s, "
        f"chunks of {CHUNK}; the longest command Redis ran: {longest:.0f} ms"
    )
    p99, p99_idle = busy.spread.p99 * 1e3, idle.spread.p99 * 1e3
    return [
        Result(
            name=f"redis_release_latency: PING p99 while {count:,} held tasks are released",
            figure=p99,
            unit="ms",
            baseline_name="PING p99 with no release",
            baseline=p99_idle,
            ratio=p99 / p99_idle,
            goal=f"p99 < {GOAL_MS:.0f} ms",
            met=p99 < GOAL_MS,
        ),
        Result(
            name=f"redis_release_latency: release of {count:,} held tasks",
            figure=seconds,
            unit="s",
            baseline_name=f"Lua LMOVE of the same messages, {CHUNK} a run",
            baseline=lmove,
            ratio=seconds / lmove,
            goal=f"<= {GOAL_SECONDS:.0f} s" if not quick else "completes",
            met=seconds <= GOAL_SECONDS,
        ),
    ]
