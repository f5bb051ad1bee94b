"""A release on a Redis broker does bounded work: chunk by chunk, only what was held when
it began, and a message whose route cannot be trusted is dead-lettered, not followed."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import Any

import pytest
import redis

from celery_tenant_gate.io.broker.redis_held import SEP, RedisHeldQueues
from celery_tenant_gate.io.broker.redis_release import unfinished_key
from celery_tenant_gate.io.store.deadletters import DeadLetters
from celery_tenant_gate.model.held import HeldMessage, TaskRef
from celery_tenant_gate.testing import FakeSuperOffice

pytestmark = pytest.mark.timeout(60)  # a release that does not end fails, never hangs


class Tenant:
    """Tenant Cust1's queue, its work queue and what a release of it does, under a
    test's own key prefix (tenant queues: ``{prefix}:tenant.{ctx}`` unless given)."""

    def __init__(
        self, client: redis.Redis, prefix: str, template: str = "", work: str = ""
    ) -> None:
        self.client, self.prefix, self.ctx = client, prefix, "Cust1"
        self.template = template or f"{prefix}:tenant.{{ctx}}"
        self.queue = self.template.format(ctx=self.ctx)
        self.work = work or f"{prefix}:work"
        self.dead = DeadLetters(client, prefix)

    def queues(self, chunk: int = 500) -> RedisHeldQueues:
        return RedisHeldQueues(
            self.client,
            default_queue=f"{self.prefix}:default",
            queue_template=self.template,
            dead_letters=self.dead,
            chunk=chunk,
        )

    def hold(self, task_id: str, route: Any = "work", *, priority: str = "") -> None:
        """Hold a message as the gate writes it (LPUSH: the oldest at the right)."""
        if route == "work":
            route = {"exchange": "", "routing_key": self.work}
        headers: dict[str, Any] = {"id": task_id, "task": "t", "tenant_gate_held": 1}
        if route is not None:
            headers["tenant_gate_route"] = route
        self.hold_raw(json.dumps({"body": "", "headers": headers}), priority=priority)

    def hold_raw(self, raw: str | bytes, *, priority: str = "") -> None:
        self.client.lpush(self.queue + (SEP + priority if priority else ""), raw)

    def taken(self, key: str | None = None) -> list[str]:
        """Ids in the order a worker takes them (BRPOP: from the right)."""
        raw: list[bytes] = self.client.lrange(key or self.work, 0, -1)
        return [json.loads(item)["headers"]["id"] for item in reversed(raw)]

    def reasons(self) -> dict[str, str]:
        return {letter.task_id: letter.reason for letter in self.dead.list(self.ctx, 100)}


@pytest.fixture
def tenant(redis_client: redis.Redis, key_prefix: str) -> Tenant:
    return Tenant(redis_client, key_prefix)


def test_a_route_back_to_a_held_queue_or_a_garbage_route_is_dead_lettered_and_the_rest_runs(
    tenant: Tenant,
) -> None:
    other_tenant = tenant.template.format(ctx="Cust2")
    bad = {
        "self": {"exchange": "", "routing_key": tenant.queue},
        "other-tenant": {"exchange": "", "routing_key": other_tenant},
        "garbage": "tenant.Cust1",
        "list": ["", tenant.work],
        "number": {"exchange": "", "routing_key": 7},
        "empty": {"exchange": "", "routing_key": ""},
        "separator": {"exchange": "", "routing_key": tenant.work + SEP + "9"},
        "long": {"exchange": "", "routing_key": "q" * 256},
    }
    for n in range(3):
        tenant.hold(f"ok{n}")
    for task_id, route in bad.items():
        tenant.hold(task_id, route)
    tenant.hold_raw(b"\xff not a kombu message")
    for n in range(3, 6):
        tenant.hold(f"ok{n}")
    tenant.hold("self-priority", bad["self"], priority="9")

    assert tenant.queues().release(tenant.queue, marker="m") == 6
    assert tenant.taken() == [f"ok{n}" for n in range(6)]
    reasons = tenant.reasons()
    assert (
        reasons.pop("")
        == "not released: not a kombu message (no JSON object with a headers object)"
    )
    assert reasons == {
        "self": f"not released: tenant_gate_route leads back to its own held queue {tenant.queue}",
        "self-priority": reasons["self"],
        "other-tenant": "not released: tenant_gate_route leads to the held tenant queue "
        + other_tenant,
        "garbage": "not released: tenant_gate_route header is not an object with a string "
        "exchange and a string routing_key",
        "list": reasons["garbage"],
        "number": reasons["garbage"],
        "empty": "not released: tenant_gate_route has neither an exchange nor a routing key",
        "separator": "not released: tenant_gate_route contains control characters (such as "
        "kombu's priority separator)",
        "long": "not released: tenant_gate_route names an exchange or routing key longer "
        "than 255 characters",
    }
    assert tenant.dead.count(tenant.ctx) == 10
    assert tenant.queues().count(tenant.queue) == 0
    assert tenant.client.llen(tenant.queue + SEP + "rejected") == 0


def test_a_message_without_a_route_goes_to_the_default_queue(tenant: Tenant) -> None:
    tenant.hold("lost", route=None)
    assert tenant.queues().release(tenant.queue, marker="m") == 1
    assert tenant.taken(f"{tenant.prefix}:default") == ["lost"]


def test_a_release_bigger_than_a_chunk_moves_each_once_in_order_while_workers_take_them(
    tenant: Tenant,
) -> None:
    ids = [f"t{n}" for n in range(1234)]
    for task_id in ids:
        tenant.hold(task_id)
    urgent = [f"u{n}" for n in range(40)]
    for task_id in urgent:
        tenant.hold(task_id, priority="9")
    tenant.client.lpush(tenant.work, json.dumps({"body": "", "headers": {"id": "queued"}}))
    runs: list[list[TaskRef]] = []
    taken: list[str] = []

    def take_one(tasks: list[TaskRef]) -> None:
        # A worker takes a message between two chunks: it must be the oldest released.
        runs.append(tasks)
        raw = tenant.client.rpop(tenant.work)
        taken.append(json.loads(raw)["headers"]["id"])

    moved = tenant.queues(chunk=100).release(tenant.queue, marker="m", on_moved=take_one)

    assert moved == len(ids) + len(urgent)
    assert len(runs) >= 13  # a chunk per run, never the whole queue at once
    assert [task.task_id for run in runs for task in run] == ids + urgent
    assert taken + tenant.taken() == ["queued", *ids]  # publish order, each exactly once
    assert tenant.taken(tenant.work + SEP + "9") == urgent
    assert tenant.queues().count(tenant.queue) == 0
    assert not tenant.client.exists(unfinished_key(tenant.queue))


def test_a_release_that_fits_in_one_chunk_goes_before_what_is_queued(tenant: Tenant) -> None:
    tenant.client.lpush(tenant.work, json.dumps({"body": "", "headers": {"id": "queued"}}))
    for n in range(3):
        tenant.hold(f"t{n}")
    assert tenant.queues(chunk=3).release(tenant.queue, marker="m") == 3
    assert tenant.taken() == ["t0", "t1", "t2", "queued"]


def test_after_an_interrupted_release_the_next_one_appends_too(tenant: Tenant) -> None:
    # The first release dies after a chunk: what it moved waits at the tail. The
    # rest, released next, must not overtake it at the head.
    for n in range(6):
        tenant.hold(f"t{n}")
    queues = tenant.queues(chunk=2)

    def die(tasks: list[TaskRef]) -> None:
        raise ConnectionError("the releasing process died")

    with pytest.raises(ConnectionError):
        queues.release(tenant.queue, marker="m", on_moved=die)
    tenant.client.lpush(tenant.work, json.dumps({"body": "", "headers": {"id": "queued"}}))
    assert tenant.queues(chunk=10).release(tenant.queue, marker="m") == 4
    assert tenant.taken() == ["t0", "t1", "queued", "t2", "t3", "t4", "t5"]
    assert not tenant.client.exists(unfinished_key(tenant.queue))


def test_a_release_during_which_its_tasks_are_held_again_ends(tenant: Tenant) -> None:
    for n in range(300):
        tenant.hold(f"t{n}")

    def held_again(tasks: list[TaskRef]) -> None:
        # A worker of a tenant that still does not run holds each released task again
        # at once: the tenant queue never empties while the release goes on.
        for _ in tasks:
            tenant.client.lmove(tenant.work, tenant.queue, "RIGHT", "LEFT")

    moved = tenant.queues(chunk=20).release(tenant.queue, marker="m", on_moved=held_again)
    assert moved == 300  # what waited when it began, not what came back meanwhile
    assert tenant.taken(tenant.queue) == [f"t{n}" for n in range(300)]  # for the next one


def test_peek_and_purge_take_what_is_no_kombu_message_and_only_what_waited(
    tenant: Tenant,
) -> None:
    tenant.hold("t0")
    tenant.hold_raw(b"\xff not a kombu message")
    tenant.hold("t1")
    queues = tenant.queues()
    assert [m.task_id for m in queues.peek(tenant.queue)] == ["t0", "", "t1"]
    got: list[HeldMessage] = []

    def sink(batch: list[HeldMessage]) -> None:
        got.extend(batch)
        tenant.hold(f"late{len(got)}")  # held while the purge runs: left for the next

    assert queues.drain(tenant.queue, sink, batch=2) == 3
    assert [(m.task_id, m.body) for m in got] == [
        ("t0", b""),
        ("", b"\xff not a kombu message"),
        ("t1", b""),
    ]
    assert tenant.taken(tenant.queue) == ["late2", "late3"]


# -- through the gate (a Redis broker; no worker needed: released tasks wait) -----------


@pytest.fixture
def gate_app(redis_url: str, key_prefix: str, superoffice: FakeSuperOffice) -> Any:
    import gateapp
    from workers import worker_env

    return gateapp.make_app(worker_env(redis_url, redis_url, key_prefix, superoffice))


def _tenant_of(gate: Any) -> Tenant:
    config = gate.config
    work = gate.app.conf.task_default_queue
    return Tenant(gate.held_queues.client, config.key_prefix, config.queue_template, work)


def test_the_gate_dead_letters_a_held_task_routed_to_its_own_held_queue(gate_app: Any) -> None:
    from celery_tenant_gate import gate_for

    gate = gate_for(gate_app)
    tenant = _tenant_of(gate)
    tenant.hold("before")
    tenant.hold("looping", {"exchange": "", "routing_key": tenant.queue})
    tenant.hold("after")
    assert gate.release("Cust1") == 2
    assert tenant.taken() == ["before", "after"]
    (letter,) = gate.dead.list("Cust1")
    assert (letter.task_id, letter.reason) == (
        "looping",
        f"not released: tenant_gate_route leads back to its own held queue {tenant.queue}",
    )


def test_the_move_lock_lives_as_long_as_a_release_that_outlasts_its_lease(
    gate_app: Any,
) -> None:
    from celery_tenant_gate import gate_for, signals

    gate = gate_for(gate_app)
    controls = gate.release.__self__  # type: ignore[attr-defined]
    controls.config = replace(controls.config, lock_lease=0.3)
    tenant = _tenant_of(gate)
    for n in range(3):
        tenant.hold(f"t{n}")
    store = gate.states.store
    lock = store.lock_key("_move.Cust1")
    seen: list[bytes | None] = []

    def slow(sender: str, **kwargs: Any) -> None:
        if not seen:
            time.sleep(1.0)  # more than three times the lock's lease (0.3 s)
            seen.append(store.client.get(lock))

    signals.task_released.connect(slow)
    try:
        assert gate.release("Cust1") == 3
    finally:
        signals.task_released.disconnect(slow)
    assert seen[0] is not None  # still held: renewed while the release ran
    assert not store.client.exists(lock)  # and let go at the end
