"""The kill -9 benchmark's tracing of a lost task on a Redis broker: kombu's window
(popped, never recorded as unacknowledged) apart from a loss by the gate, from the
commands the server's MONITOR shows."""

from __future__ import annotations

import json

from bench.faults.redis_trace import Trace, verdict

WORK, TENANT = "p.work", "p.tenant.Cust1"
TASK, TAG1, TAG2 = (
    "0b7e1c52-4c2e-4f0b-9a5e-6d1f2c3b4a59",
    "5a1d2e3f-0000-4a4a-8b8b-111122223333",
    "6b2e3f40-1111-4b4b-9c9c-444455556666",
)


def _message(**headers: object) -> str:
    # kombu's Redis envelope, as MONITOR shows it (redis-py joins the arguments).
    return json.dumps({"body": "W1tdLCB7fV0=", "headers": {"id": TASK, "root_id": TASK, **headers}})


def _trace(*commands: str) -> Trace:
    trace = Trace()
    for command in commands:
        trace.feed(command)
    trace.feed(f"RPUSH p:ran Cust2 7 {4242} 1700000000.0")  # a body's ledger row
    return trace


def _verdict(trace: Trace, left: str = "") -> tuple[bool, str]:
    found = verdict(trace.events[TASK], {TENANT}.__contains__, left)
    return found.by_broker, found.why


PUBLISH = f"LPUSH {WORK} {_message()}"
DELIVER = f'HSET unacked {TAG1} [{_message()}, "", "{WORK}"]'
HOLD = f"LPUSH {TENANT} {_message(tenant_gate_held=1)}"
ACK = f"HDEL unacked {TAG1}"
# The release's Lua script pushes the held message back to its work queue.
RELEASE = f"RPUSH {WORK} {_message(tenant_gate_held=1)}"


def test_popped_and_never_recorded_is_kombus_window() -> None:
    assert _verdict(_trace(PUBLISH)) == (
        True,
        f"delivered 0 time(s), held 0 time(s); pushed to {WORK}, then popped "
        "and never recorded as unacknowledged (kombu's window, kombu#305)",
    )
    # Held, released, then popped and lost the same way: still kombu's window.
    by_broker, why = _verdict(_trace(PUBLISH, DELIVER, HOLD, ACK, RELEASE))
    assert by_broker
    assert why.startswith("delivered 1 time(s), held 1 time(s); pushed to p.work, then")
    # Delivered, the worker killed, restored by kombu (HDEL, then a push): the same.
    restored = _trace(PUBLISH, DELIVER, f"ZREM unacked_index {TAG1}", ACK, PUBLISH)
    assert _verdict(restored)[0]


def test_acknowledged_without_a_copy_or_a_run_is_the_gates() -> None:
    # A hold that acknowledged before pushing its copy, and died.
    assert _verdict(_trace(PUBLISH, DELIVER, ACK)) == (
        False,
        f"delivered 1 time(s), held 0 time(s); delivered from {WORK} and acknowledged unrun",
    )
    # Delivered again after a release, and acknowledged without running.
    second = f'HSET unacked {TAG2} [{_message()}, "", "{WORK}"]'
    found = _trace(PUBLISH, DELIVER, HOLD, ACK, RELEASE, second, f"HDEL unacked {TAG2}")
    assert _verdict(found) == (
        False,
        f"delivered 2 time(s), held 1 time(s); delivered from {WORK} and acknowledged unrun",
    )


def test_held_and_never_released_is_the_gates() -> None:
    assert _verdict(_trace(PUBLISH, DELIVER, HOLD, ACK)) == (
        False,
        f"delivered 1 time(s), held 1 time(s); gone from {TENANT} without a release",
    )


def test_a_task_still_in_redis_is_not_lost_by_the_broker() -> None:
    assert _verdict(_trace(PUBLISH), left=WORK) == (False, f"still in {WORK}")
    assert _verdict(_trace(), left="") == (False, "never seen pushed (no trace)")
