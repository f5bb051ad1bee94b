"""AmqpHeldQueues against a real RabbitMQ.

The broker is ``TENANT_GATE_TEST_AMQP_URL`` or the local default. Without one the
tests are skipped, except in CI, where that is a failure. Every test uses queues of
its own and deletes them.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kombu.connection import Connection
from workers import wait_until

from celery_tenant_gate.io.broker.amqp_held import RELEASED_HEADER, AmqpHeldQueues, HeldMessage
from celery_tenant_gate.io.broker.amqp_queues import DEAD_LETTER_ARGUMENTS, HOLD_EXCHANGE

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(120)]

AMQP_URL = os.environ.get("TENANT_GATE_TEST_AMQP_URL") or "amqp://guest:guest@127.0.0.1:5672//"


def _connect() -> Connection:
    return Connection(AMQP_URL, connect_timeout=5, transport_options={"read_timeout": 30})


#: How the worker holds: through the hold exchange into a tenant queue that
#: dead-letters (when it knows the destination queue), or straight into the tenant
#: queue (when it does not, and as older versions did).
MODES = ("dead-letter", "publish")


class Broker:
    """A test's own connection and queue names; deletes its queues afterwards."""

    def __init__(self, url: str, mode: str = "publish") -> None:
        self.mode = mode
        self.conn = _connect()
        self.channel: Any = self.conn.default_channel
        self.channel.auto_decode = False  # keep bodies as bytes, as they were sent
        self.prefix = f"tgtest.{uuid.uuid4().hex[:10]}"
        self.queues: list[str] = []

    def name(self, suffix: str) -> str:
        """A unique queue name, deleted at the end of the test (created or not)."""
        name = f"{self.prefix}.{suffix}"
        self.queues.append(name)
        return name

    def declare(self, suffix: str, **arguments: Any) -> str:
        name = self.name(suffix)
        self.channel.queue_declare(
            name, durable=True, auto_delete=False, arguments=arguments or None
        )
        return name

    def tenant(self, suffix: str) -> str:
        """A tenant queue, declared as a hold in this test's mode declares it."""
        if self.mode == "publish":
            return self.declare(suffix)
        name = self.name(suffix)
        self.channel.exchange_declare(HOLD_EXCHANGE, "direct", durable=True, auto_delete=False)
        self.channel.queue_declare(
            name, durable=True, auto_delete=False, arguments=dict(DEAD_LETTER_ARGUMENTS)
        )
        self.channel.queue_bind(name, HOLD_EXCHANGE, routing_key=name)
        return name

    def hold(
        self,
        tenant_queue: str,
        index: int,
        route: tuple[str, str] | None,
        priority: int | None = None,
        destination: str | None = None,
        keep: dict[str, Any] | None = None,
    ) -> None:
        """Put a held task message in *tenant_queue* the way the worker does.

        In dead-letter mode the worker knows the *destination* queue when the route
        names it (the default exchange), or when it is given (a named exchange)."""
        headers: dict[str, Any] = {
            "id": f"task-{index}",
            "task": "app.tasks.sync",
            "tenant_gate_ctx": "Cust123",
            "tenant_gate_held": 1,
            "retries": 0,
        }
        if route is not None:
            headers["tenant_gate_route"] = {"exchange": route[0], "routing_key": route[1]}
        headers.update(keep or {})
        body = json.dumps([[index], {"k": "v" * (index % 7)}, {}]).encode()
        message = self.channel.prepare_message(
            body,
            priority=priority,
            content_type="application/json",
            content_encoding="utf-8",
            headers=headers,
            properties={"delivery_mode": 2, "correlation_id": f"task-{index}"},
        )
        if destination is None and route is not None and route[0] == "":
            destination = route[1]
        if self.mode == "dead-letter" and destination is not None:
            message.properties["application_headers"]["BCC"] = [tenant_queue]
            self.channel.basic_publish(message, exchange=HOLD_EXCHANGE, routing_key=destination)
        else:
            self.channel.basic_publish(message, exchange="", routing_key=tenant_queue)

    def settle(self) -> None:
        """Wait until the broker has routed everything published so far."""
        self.channel.queue_declare(self.prefix + ".settle", auto_delete=True)
        self.channel.queue_delete(self.prefix + ".settle")

    def ready(self, queue: str) -> int | None:
        """Messages in *queue*, or None when it does not exist."""
        channel: Any = self.conn.channel()
        try:
            _, ready, _ = channel.queue_declare(queue, passive=True)
        except self.conn.channel_errors:
            return None
        channel.close()
        return int(ready)

    def take(self, queue: str) -> list[Any]:
        """Every message of *queue*, oldest first (removed)."""
        found = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            raw = self.channel.basic_get(queue, no_ack=True)
            if raw is None:
                break
            found.append(raw)
        return found

    def close(self) -> None:
        channel: Any = self.conn.channel()
        for name in self.queues:
            channel.queue_delete(name)
        channel.close()
        self.conn.release()


@pytest.fixture(params=MODES)
def broker(request: pytest.FixtureRequest, amqp_url: str) -> Iterator[Broker]:
    instance = Broker(amqp_url, request.param)
    yield instance
    instance.close()


@pytest.fixture
def held(amqp_url: str) -> AmqpHeldQueues:
    return AmqpHeldQueues(_connect, idle_wait=0.05, confirm_timeout=30)


def _ids(messages: list[HeldMessage]) -> list[str]:
    return [m.task_id for m in messages]


def test_release_moves_every_message_to_its_route_in_order(
    broker: Broker, held: AmqpHeldQueues
) -> None:
    tenant = broker.tenant("Cust123")
    first = broker.declare("first")
    second = broker.declare("second", **{"x-max-priority": 9})
    for i in range(300):
        broker.hold(tenant, i, ("", first if i % 3 else second), priority=i % 10)
    broker.settle()
    before = {m.task_id: m for m in held.peek(tenant, limit=300)}

    moved = held.release(tenant, marker="resume-1", batch=64)

    assert moved == 300
    assert broker.ready(tenant) == 0
    got_first = broker.take(first)
    assert [m.headers["id"] for m in got_first] == [f"task-{i}" for i in range(300) if i % 3]
    for raw in got_first:
        original = before[raw.headers["id"]]
        assert bytes(raw.body) == original.body
        assert raw.properties["content_type"] == "application/json"
        assert raw.properties["content_encoding"] == "utf-8"
        assert raw.properties["delivery_mode"] == 2
        assert raw.properties["priority"] == original.properties["priority"]
        assert raw.properties["correlation_id"] == original.properties["correlation_id"]
        if broker.mode == "publish":
            assert raw.headers == {**original.headers, RELEASED_HEADER: "resume-1"}
        else:  # the broker moved it: its headers, plus the broker's x-death record
            assert {k: v for k, v in raw.headers.items() if not k.startswith("x-")} == (
                original.headers
            )
    # A priority queue hands out the highest priority first, in order within one.
    got_second = broker.take(second)
    expected = sorted((i for i in range(300) if i % 3 == 0), key=lambda i: (-(i % 10), i))
    assert [m.headers["id"] for m in got_second] == [f"task-{i}" for i in expected]
    assert all(m.properties["priority"] == int(m.headers["id"][5:]) % 10 for m in got_second)


def test_release_copies_bodies_byte_for_byte(broker: Broker, held: AmqpHeldQueues) -> None:
    tenant = broker.tenant("Bytes")
    target = broker.declare("target")
    bodies = [
        ("application/json", "utf-8", '["Gr\u00fc\u00dfe", "\u65e5\u672c"]'.encode()),
        ("application/x-python-serialize", "binary", bytes(range(256))),
        ("application/json", "utf-8", b"\xff\xfe not utf-8"),
    ]
    for content_type, encoding, body in bodies:
        message = broker.channel.prepare_message(
            body,
            content_type=content_type,
            content_encoding=encoding,
            headers={
                "id": content_type,
                "tenant_gate_route": {"exchange": "", "routing_key": target},
            },
            properties={"delivery_mode": 2},
        )
        broker.channel.basic_publish(message, exchange="", routing_key=tenant)
    broker.settle()

    assert [m.body for m in held.peek(tenant)] == [body for _, _, body in bodies]
    assert held.release(tenant, marker="m") == 3
    got = broker.take(target)
    assert [bytes(m.body) for m in got] == [body for _, _, body in bodies]
    assert [m.properties["content_encoding"] for m in got] == ["utf-8", "binary", "utf-8"]


def test_release_without_route_header_goes_to_the_default_queue(broker: Broker) -> None:
    tenant = broker.tenant("Cust7")
    default = broker.declare("celery")
    held = AmqpHeldQueues(_connect, default_queue=default)
    for i in range(5):
        broker.hold(tenant, i, None)
    broker.settle()

    assert held.release(tenant, marker="m") == 5
    assert [m.headers["id"] for m in broker.take(default)] == [f"task-{i}" for i in range(5)]


def test_release_through_a_named_exchange(broker: Broker, held: AmqpHeldQueues) -> None:
    tenant = broker.tenant("Cust8")
    target = broker.declare("target")
    exchange = broker.prefix + ".ex"
    broker.channel.exchange_declare(exchange, "direct", durable=False, auto_delete=True)
    broker.channel.queue_bind(target, exchange, routing_key="work")
    for i in range(10):
        broker.hold(tenant, i, (exchange, "work"), destination=target)
    broker.settle()
    try:
        assert held.release(tenant, marker="m") == 10
        assert [m.headers["id"] for m in broker.take(target)] == [f"task-{i}" for i in range(10)]
    finally:
        broker.channel.exchange_delete(exchange)


def test_a_large_release_moves_everything_in_order(broker: Broker, held: AmqpHeldQueues) -> None:
    tenant = broker.tenant("Big")
    target = broker.declare("target")
    for i in range(3_000):
        broker.hold(tenant, i, ("", target))
    broker.settle()
    assert held.release(tenant, marker="bulk") == 3_000  # its speed: bench/release.py
    assert broker.ready(tenant) == 0
    assert [m.headers["id"] for m in broker.take(target)] == [f"task-{i}" for i in range(3_000)]


def test_a_release_ends_and_leaves_late_arrivals_for_the_next_one(
    broker: Broker, held: AmqpHeldQueues, amqp_url: str
) -> None:
    # A task held again at once (its tenant still does not run) must not keep a
    # release going for ever: only what waited when it started is moved.
    tenant = broker.tenant("Busy")
    target = broker.declare("target")
    for i in range(2_000):
        broker.hold(tenant, i, ("", target))
    broker.settle()

    def hold_more() -> None:
        late = Broker(amqp_url, broker.mode)
        try:
            for i in range(2_000, 2_300):
                late.hold(tenant, i, ("", target))
            late.settle()
        finally:
            late.close()

    thread = threading.Thread(target=hold_more)
    thread.start()
    try:
        moved = held.release(tenant, marker="m")
    finally:
        thread.join(timeout=60)
    assert moved >= 2_000  # what waited at the start (a late one may beat the count)
    late = broker.ready(tenant)
    assert moved + late == 2_300
    assert held.release(tenant, marker="m2") == late
    assert [m.headers["id"] for m in broker.take(target)] == [f"task-{i}" for i in range(2_300)]


def test_a_release_ends_when_what_it_moved_is_held_again(
    broker: Broker, held: AmqpHeldQueues, amqp_url: str
) -> None:
    # The tenant still does not run: a worker holds every released task again at
    # once (same task id, its headers kept and its hold count one up, as holds do),
    # while the release is still going.
    tenant = broker.tenant("tenant.Again")
    target = broker.declare("target")
    for i in range(200):
        broker.hold(tenant, i, ("", target))
    broker.settle()
    stop = threading.Event()

    def hold_again() -> None:
        worker = Broker(amqp_url, broker.mode)
        channel: Any = worker.conn.channel()
        channel.auto_decode = False

        received: list[Any] = []
        channel.basic_consume(target, callback=received.append)
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    worker.conn.drain_events(timeout=0.1)
                for raw in received:
                    index = int(raw.headers["id"].split("-")[1])
                    again = {**raw.headers, "tenant_gate_held": raw.headers["tenant_gate_held"] + 1}
                    worker.hold(tenant, index, ("", target), keep=again)
                    channel.basic_ack(raw.delivery_tag)
                received.clear()
        finally:
            channel.close()
            worker.conn.release()

    thread = threading.Thread(target=hold_again)
    thread.start()
    try:
        moved = held.release(tenant, marker="round")  # must return
    finally:
        stop.set()
        thread.join(timeout=30)
    assert 200 <= moved < 400
    broker.settle()
    waiting = {m.headers["id"] for m in broker.take(tenant)} | {
        m.headers["id"] for m in broker.take(target)
    }
    assert waiting == {f"task-{i}" for i in range(200)}  # none lost


def test_release_stops_at_an_unroutable_message_and_loses_nothing(
    broker: Broker, held: AmqpHeldQueues
) -> None:
    from celery_tenant_gate.io.broker.amqp_held import HeldReleaseError

    tenant = broker.tenant("Cust9")
    target = broker.declare("target")
    missing = broker.name("missing")  # never declared
    for i in range(6):
        broker.hold(tenant, i, ("", missing if i == 3 else target))
    broker.settle()

    with pytest.raises(HeldReleaseError) as caught:
        held.release(tenant, marker="m")

    assert caught.value.routes == [("", missing)]
    assert caught.value.moved == 5
    assert broker.ready(missing) is None
    assert [m.headers["id"] for m in broker.take(target)] == [f"task-{i}" for i in (0, 1, 2, 4, 5)]
    assert _ids(held.peek(tenant)) == ["task-3"]


def test_release_to_a_missing_exchange_moves_only_what_came_before(
    broker: Broker, held: AmqpHeldQueues
) -> None:
    from celery_tenant_gate.io.broker.amqp_held import HeldReleaseError

    tenant = broker.tenant("Cust10")
    target = broker.declare("target")
    for i in range(6):
        broker.hold(tenant, i, (broker.prefix + ".nope", "x") if i == 2 else ("", target))
    broker.settle()

    with pytest.raises(HeldReleaseError) as caught:
        held.release(tenant, marker="m")

    assert caught.value.moved == 2
    assert [m.headers["id"] for m in broker.take(target)] == ["task-0", "task-1"]
    assert _ids(held.peek(tenant)) == [f"task-{i}" for i in range(2, 6)]


def test_count_and_peek_neither_create_nor_reorder(broker: Broker, held: AmqpHeldQueues) -> None:
    missing = broker.name("tenant.Nobody")
    assert held.count(missing) == 0
    assert held.peek(missing) == []
    assert broker.ready(missing) is None

    tenant = broker.tenant("Cust11")
    target = broker.declare("target")
    for i in range(20):
        broker.hold(tenant, i, ("", target), priority=i % 3)
    broker.settle()

    assert held.count(tenant) == 20
    first = held.peek(tenant, limit=5)
    assert _ids(first) == [f"task-{i}" for i in range(5)]
    assert first[0].task_name == "app.tasks.sync"
    assert first[0].content_type == "application/json"
    assert first[1].properties["priority"] == 1
    everything = held.peek(tenant, limit=100)
    assert _ids(everything) == [f"task-{i}" for i in range(20)]
    assert held.count(tenant) == 20
    assert _ids(held.peek(tenant, limit=100)) == _ids(everything)
    assert held.release(tenant, marker="m") == 20
    assert [m.headers["id"] for m in broker.take(target)] == [f"task-{i}" for i in range(20)]


def test_drain_hands_every_message_to_the_sink_and_empties_the_queue(
    broker: Broker, held: AmqpHeldQueues
) -> None:
    tenant = broker.tenant("Gone")
    for i in range(1_234):
        broker.hold(tenant, i, ("", "celery"))
    broker.settle()
    batches: list[list[HeldMessage]] = []

    removed = held.drain(tenant, batches.append, batch=100)

    assert removed == 1_234
    assert all(0 < len(b) <= 100 for b in batches)
    assert _ids([m for b in batches for m in b]) == [f"task-{i}" for i in range(1_234)]
    assert held.count(tenant) == 0
    assert broker.ready(tenant) == 0


def test_a_failing_sink_leaves_the_messages_in_the_queue(
    broker: Broker, held: AmqpHeldQueues
) -> None:
    tenant = broker.tenant("Gone2")
    for i in range(50):
        broker.hold(tenant, i, ("", "celery"))
    broker.settle()
    calls: list[int] = []

    def sink(batch: list[HeldMessage]) -> None:
        calls.append(len(batch))
        if len(calls) == 2:
            raise RuntimeError("the record store is down")

    with pytest.raises(RuntimeError, match="record store"):
        held.drain(tenant, sink, batch=20)

    assert calls == [20, 20]
    assert held.count(tenant) == 30
    assert _ids(held.peek(tenant)) == [f"task-{i}" for i in range(20, 50)]


def test_missing_or_empty_queues_release_and_drain_nothing(
    broker: Broker, held: AmqpHeldQueues
) -> None:
    missing = broker.name("tenant.Missing")
    empty = broker.tenant("Empty")
    batches: list[list[HeldMessage]] = []

    assert held.release(missing, marker="m") == 0
    assert held.release(empty, marker="m") == 0
    assert held.drain(missing, batches.append) == 0
    assert held.drain(empty, batches.append) == 0
    assert batches == []
    assert broker.ready(missing) is None
    assert broker.ready(empty) == 0


_RELEASE_IN_A_CHILD = """
import sys
from kombu.connection import Connection
from celery_tenant_gate.io.broker.amqp_held import AmqpHeldQueues
url, queue = sys.argv[1], sys.argv[2]
AmqpHeldQueues(lambda: Connection(url)).release(queue, marker="doomed", batch=100)
"""


def test_kill_9_during_a_release_loses_nothing(
    broker: Broker, held: AmqpHeldQueues, amqp_url: str
) -> None:
    import signal
    import subprocess
    import sys

    tenant = broker.tenant("Killed")
    target = broker.declare("target")
    for i in range(3_000):
        broker.hold(tenant, i, ("", target))
    broker.settle()
    child = subprocess.Popen([sys.executable, "-c", _RELEASE_IN_A_CHILD, amqp_url, tenant])
    try:
        deadline = time.monotonic() + 60
        while (broker.ready(target) or 0) < 500 and child.poll() is None:
            assert time.monotonic() < deadline, "the release never started"
            time.sleep(0.005)  # a queue length: nothing announces it
        child.send_signal(signal.SIGKILL)  # in the middle of the release
    finally:
        child.wait(10)
    assert child.returncode == -signal.SIGKILL, "the release ended before it was killed"
    # The broker requeues what the dead release had taken but not acknowledged.
    held.release(tenant, marker="again")
    ids = [m.headers["id"] for m in broker.take(target)]
    assert set(ids) == {f"task-{i}" for i in range(3_000)}  # nothing lost
    print(f"kill -9 during a release: 0 lost, {len(ids) - 3_000} duplicate(s)")


def test_release_by_the_broker_can_be_switched_off(amqp_url: str) -> None:
    # tenant_gate_amqp_release_by_broker = False: even messages held through the hold
    # exchange are re-published with confirms, not dead-lettered.
    broker = Broker(amqp_url, "dead-letter")
    try:
        tenant = broker.tenant("tenant.Confirmed")
        target = broker.declare("target")
        for i in range(20):
            broker.hold(tenant, i, ("", target))
        broker.settle()
        held = AmqpHeldQueues(_connect, dead_letter=False)
        assert held.release(tenant, marker="confirmed") == 20
        got = broker.take(target)
        assert [m.headers["id"] for m in got] == [f"task-{i}" for i in range(20)]
        assert all(m.headers[RELEASED_HEADER] == "confirmed" for m in got)
        assert not any("x-death" in m.headers for m in got)
    finally:
        broker.close()


def test_counts_of_several_queues_over_one_connection(broker: Broker, held: AmqpHeldQueues) -> None:
    first, second = broker.tenant("tenant.A"), broker.tenant("tenant.B")
    target = broker.declare("target")
    for i in range(3):
        broker.hold(first, i, ("", target))
    for i in range(2):
        broker.hold(second, i, ("", target))
    broker.settle()
    missing = broker.name("tenant.Gone")
    assert held.counts([first, missing, second]) == {first: 3, missing: 0, second: 2}
    assert broker.ready(missing) is None  # not created


def test_a_pool_side_hold_survives_its_tenant_queue_being_deleted() -> None:
    # A task already in the pool when its tenant paused is held from there. If the
    # tenant queue was deleted under this process (which declared it before), the
    # copy must not vanish: RabbitMQ drops an unroutable message and confirms it.
    from celery import Celery

    from celery_tenant_gate.io.broker.holding import ConfirmedProducers, hold_request

    broker = Broker(AMQP_URL, mode="dead-letter")
    app = Celery("pool-hold-test", broker=AMQP_URL, set_as_current=False)

    @app.task(bind=True, name="pool_hold_test.work")
    def work(self: Any, n: int) -> None:  # never run here
        raise AssertionError("the body must not run")

    tenant, destination = broker.name("tenant"), broker.declare("work")
    producers = ConfirmedProducers(app)
    try:
        for n in range(2):
            work.push_request(
                id=f"task-{n}",
                args=[n],
                kwargs={},
                headers={"id": f"task-{n}", "task": work.name},
                delivery_info={"exchange": "", "routing_key": destination},
            )
            try:
                hold_request(
                    work, tenant, "Cust1", producers=producers, amqp=True, destination=destination
                )
            finally:
                work.pop_request()
            assert broker.channel.queue_declare(tenant, passive=True).message_count == 1
            if n == 0:
                broker.channel.queue_delete(tenant)  # someone deletes it, task and all
    finally:
        with contextlib.suppress(Exception), producers.acquire() as producer:
            producer.connection.close()
        broker.close()


@pytest.mark.timeout(30)
def test_a_release_ends_while_new_tasks_keep_being_held(
    broker: Broker, held: AmqpHeldQueues, amqp_url: str
) -> None:
    # During a resume the tenant is still paused: its new tasks keep being held into
    # the tenant queue, faster than the queue is ever idle. The release stops after
    # twice what waited when it began (and a batch); the rest waits, in order.
    # (Without that bound it would never return.)
    tenant = broker.tenant("Stream")
    target = broker.declare("target")
    for i in range(300):
        broker.hold(tenant, i, ("", target))
    broker.settle()
    stop = threading.Event()
    given: list[int] = []

    def stream() -> None:
        producer = Broker(amqp_url, broker.mode)
        try:
            i = 300
            while not stop.is_set():
                producer.hold(tenant, i, ("", target))
                given.append(i)
                i += 1
            producer.settle()
        finally:
            producer.close()

    thread = threading.Thread(target=stream)
    thread.start()
    try:
        moved = held.release(tenant, marker="m", batch=50)  # must return
    finally:
        stop.set()
        thread.join(timeout=30)
    assert moved >= 300
    # Messages the release took past its bound go back as its channel closes: counted
    # once the broker has them back (a loss never settles).
    wait_until(
        lambda: moved + (broker.ready(tenant) or 0) == 300 + len(given),
        timeout=10,
        what="every message released or back in the tenant queue",
    )
    ids = [m.headers["id"] for m in broker.take(target)]
    assert ids == [f"task-{i}" for i in range(moved)]
