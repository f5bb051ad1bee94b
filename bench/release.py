"""How long ``gate.resume(ctx)`` takes to put a tenant's 10,000 held tasks back in
their queue, against the broker's raw rate for moving as many messages of the size.

Setup: the tenant is paused by hand, 10,000 of its tasks (1,000 with --quick) are
published, and a ``celery worker -P solo`` subprocess holds them all (re-publishes
them to the tenant queue); then the worker is stopped. Timed: from ``gate.resume(ctx)``
until every task is back in the work queue (counted by the broker).

Baselines, median of three:

- Redis: one Lua script LMOVEing as many messages, the same released messages,
  from one list to another;
- RabbitMQ: kombu publishing as many messages of the same body and headers to a
  queue, confirmed in batches of 500 (the batch size the release uses).

Goal (issue 4): the release takes <= 2.0 s; ratio = release / baseline.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

from kombu import Connection, Producer

from bench.results import Result, timed
from bench.workers import AMQP_URL, Namespace, amqp_reachable, amqp_ready_count, running, shown
from celery_tenant_gate.io.broker.holding import tenant_queue
from celery_tenant_gate.model.held import HeldMessage
from celery_tenant_gate.testing import EmbeddedRedis, FakeSuperOffice

GOAL_SECONDS = 2.0
CTX = "Cust1"
REPEATS = 3
BATCH = 500

_LMOVE_ALL = """
for i = 1, tonumber(ARGV[1]) do
    redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
end
return redis.call('LLEN', KEYS[2])
"""


def _work_count(ns: Namespace) -> int:
    if ns.is_amqp:
        return amqp_ready_count(ns.broker, ns.work_queue)
    return int(ns.redis.llen(ns.work_queue))


@contextlib.contextmanager
def _work_counter(ns: Namespace) -> Iterator[Callable[[], int]]:
    """Counts the work queue, on one connection opened before the clock starts (a
    connection per count would cost more than what is measured)."""
    if not ns.is_amqp:
        yield lambda: _work_count(ns)
        return
    with Connection(ns.broker, connect_timeout=5) as conn:
        conn.ensure_connection(max_retries=3)
        channel: Any = conn.channel()
        yield lambda: int(channel.queue_declare(ns.work_queue, passive=True)[1])


def _hold(ns: Namespace, count: int) -> None:
    """Pause the tenant and have a worker hold *count* of its tasks; stop the worker."""
    ns.gate.pause(CTX, "benchmark: held")
    queue = ns.gate.queue_for(CTX)
    with running(ns) as worker:
        ns.publish(ns.gated, [CTX], count, f"{ns.prefix}:ran")
        deadline = time.monotonic() + 60 + count / 50
        while (held := ns.gate.held_queues.count(queue)) < count:
            worker.check()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{held} of {count} tasks held\n{worker.log_tail()}")
            time.sleep(0.2)
    ran = ns.redis.llen(f"{ns.prefix}:ran")
    assert ran == 0, f"{ran} tasks of the paused tenant ran"
    left = _work_count(ns)
    assert left == 0, f"{left} tasks were left in the work queue"


def _redis_baseline(ns: Namespace, count: int) -> float:
    """Seconds for one Lua script to LMOVE the released messages between two lists."""
    src, dst = f"{ns.prefix}:raw:a", f"{ns.prefix}:raw:b"
    raw: list[Any] = ns.redis.lrange(ns.work_queue, 0, -1)
    assert len(raw) == count
    pipe = ns.redis.pipeline(transaction=False)
    for i in range(0, count, 1000):
        pipe.rpush(src, *raw[i : i + 1000])
    pipe.execute()
    move = ns.redis.register_script(_LMOVE_ALL)
    move(keys=[dst, src], args=[0])  # loads the script
    lists = [src, dst]

    def move_all() -> None:
        moved = move(keys=lists, args=[count])
        assert moved == count
        lists.reverse()  # and back again next time

    times = timed(move_all, REPEATS)
    ns.redis.delete(*lists)
    return statistics.median(times)


class _Confirms:
    def __init__(self, channel: Any) -> None:
        self.pending: set[int] = set()
        self.nacked = 0
        self.next = 1
        channel.events["basic_ack"].add(self._ack)
        channel.events["basic_nack"].add(self._nack)
        channel.confirm_select()

    def sent(self) -> None:
        self.pending.add(self.next)
        self.next += 1

    def _done(self, tag: int, multiple: bool) -> int:
        done = {s for s in self.pending if s <= tag} if multiple else {tag} & self.pending
        self.pending -= done
        return len(done)

    def _ack(self, tag: int, multiple: bool) -> None:
        self._done(tag, multiple)

    def _nack(self, tag: int, multiple: bool) -> None:
        self.nacked += self._done(tag, multiple)


def _amqp_baseline(ns: Namespace, sample: HeldMessage, count: int) -> float:
    """Seconds for kombu to publish *count* copies of *sample*, confirmed by batches."""
    queue = tenant_queue(f"{ns.prefix}.raw")
    with Connection(ns.broker, connect_timeout=5) as conn:
        conn.ensure_connection(max_retries=3)
        channel: Any = conn.channel()
        try:
            queue(channel).declare()
            confirms = _Confirms(channel)
            producer = Producer(channel)

            def publish_all() -> None:
                for first in range(0, count, BATCH):
                    for _ in range(min(BATCH, count - first)):
                        producer.publish(
                            sample.body,
                            exchange="",
                            routing_key=queue.name,
                            content_type=sample.content_type,
                            content_encoding=sample.content_encoding,
                            headers=sample.headers,
                            delivery_mode=2,
                        )
                        confirms.sent()
                    deadline = time.monotonic() + 30
                    while confirms.pending:
                        if time.monotonic() > deadline:
                            raise TimeoutError("RabbitMQ did not confirm within 30 s")
                        with contextlib.suppress(TimeoutError):
                            conn.drain_events(timeout=1)
                assert confirms.nacked == 0, f"RabbitMQ refused {confirms.nacked} message(s)"

            times = timed(publish_all, REPEATS, before=lambda: channel.queue_purge(queue.name))
            assert amqp_ready_count(ns.broker, queue.name) == count
        finally:
            with contextlib.suppress(Exception):
                channel.queue_delete(queue.name)
            with contextlib.suppress(Exception):
                channel.close()
    return statistics.median(times)


def _measure(label: str, broker: str, redis_url: str, state_api: str, count: int) -> Result:
    ns = Namespace(broker, redis_url, state_api)
    tenant_queue_name = ns.gate.queue_for(CTX)
    try:
        ns.learn_running([CTX])
        _hold(ns, count)
        sample = ns.gate.held(CTX, limit=1)[0]

        started = time.perf_counter()
        released = ns.gate.resume(CTX)
        # Back in flight: every task in the work queue, where a worker takes it (on
        # RabbitMQ the broker may still be dead-lettering when resume returns).
        with _work_counter(ns) as work_count:
            deadline = time.monotonic() + 30
            while (back := work_count()) < count and time.monotonic() < deadline:
                time.sleep(0.001)
        seconds = time.perf_counter() - started

        assert released == count, f"resume released {released} of {count}"
        assert back == count, f"{back} of {count} tasks are back in the work queue"
        still = ns.gate.held_queues.count(tenant_queue_name)
        assert still == 0, f"{still} tasks still held"
        if ns.is_amqp:
            baseline_name = f"kombu publish, confirmed by {BATCH} (median of {REPEATS})"
            baseline = _amqp_baseline(ns, sample, count)
        else:
            baseline_name = f"Lua LMOVE loop (median of {REPEATS})"
            baseline = _redis_baseline(ns, count)
        print(
            f"  gate.release.{label}: {count} held tasks of {len(sample.body)}-byte bodies "
            f"released in {seconds:.3f} s"
        )
    finally:
        ns.cleanup(extra_queues=[tenant_queue_name])
    return Result(
        name=f"gate.release.{label}",
        figure=seconds,
        unit="s",
        baseline_name=baseline_name,
        baseline=baseline,
        ratio=seconds / baseline,
        goal=f"<= {GOAL_SECONDS} s",
        met=seconds <= GOAL_SECONDS,
    )


def run(redis_url: str | None = None, quick: bool = False) -> list[Result]:
    count = 1_000 if quick else 10_000
    results: list[Result] = []
    with ExitStack() as stack:
        if redis_url is None:
            redis_url = stack.enter_context(EmbeddedRedis()).url
        superoffice = stack.enter_context(FakeSuperOffice())
        api = superoffice.state_api_url
        results.append(_measure("redis", redis_url, redis_url, api, count))
        why = amqp_reachable()
        if why is None:
            results.append(_measure("rabbitmq", AMQP_URL, redis_url, api, count))
        else:
            print(f"  gate.release.rabbitmq skipped: no RabbitMQ at {shown(AMQP_URL)} ({why})")
        assert superoffice.calls() == 0, "the tenant's state must come from the store"
    return results
