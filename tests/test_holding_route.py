"""Holding keeps the route a task was delivered from; a retry takes a route back only
from a message that was held, and only a usable one. Headers are untrusted input."""

from __future__ import annotations

from celery_tenant_gate.io.broker.amqp_release import route_of
from celery_tenant_gate.io.broker.holding import RELEASE_EXCHANGE, held_headers, restore_route


def test_holding_keeps_the_route_the_broker_delivered_from() -> None:
    queue = "tenant.Cust1"
    forged = {"tenant_gate_route": {"exchange": "", "routing_key": queue}}
    # A producer's own route header: replaced by where the message really came from.
    headers = held_headers(forged, {"exchange": "", "routing_key": "work"}, queue)
    assert headers["tenant_gate_route"] == {"exchange": "", "routing_key": "work"}
    assert headers["tenant_gate_held"] == 1
    # Back from the tenant queue (a release on Redis moves it as stored; on RabbitMQ
    # through the release exchange): the route of its first hold stays.
    first = {"tenant_gate_route": {"exchange": "celery", "routing_key": "work"}}
    for info in ({"exchange": "", "routing_key": queue}, {"exchange": RELEASE_EXCHANGE}):
        assert held_headers(first, info, queue)["tenant_gate_route"] == first["tenant_gate_route"]
    # The broker said nothing: no route, so a release sends it to the default queue.
    assert "tenant_gate_route" not in held_headers(forged, {}, queue)


def test_a_retry_takes_the_route_back_only_from_a_held_message_with_a_usable_one() -> None:
    came = {"exchange": "", "routing_key": "tenant.Cust1"}
    for headers in (
        {"tenant_gate_route": {"exchange": "", "routing_key": "elsewhere"}},  # never held
        {"tenant_gate_held": 1, "tenant_gate_route": "garbage"},
        {"tenant_gate_held": 1, "tenant_gate_route": {"exchange": 1, "routing_key": "w"}},
        {"tenant_gate_held": 1, "tenant_gate_route": {"exchange": "", "routing_key": "w\x06"}},
    ):
        info = dict(came)
        restore_route(headers, info)
        assert info == came, headers
    info = dict(came)
    restore_route(
        {"tenant_gate_held": 2, "tenant_gate_route": {"exchange": "", "routing_key": "w"}}, info
    )
    assert info == {"exchange": "", "routing_key": "w"}


def test_a_release_by_re_publishing_takes_only_a_usable_route_header() -> None:
    # RabbitMQ, a held message that the release re-publishes: its route header is read
    # back from the broker, so a broken or hostile one sends it to the default queue.
    good = {"exchange": "celery", "routing_key": "work"}
    assert route_of({"tenant_gate_route": good}, "default") == ("celery", "work")
    for bad in (
        "garbage",
        {"exchange": 1, "routing_key": "work"},
        {"exchange": "", "routing_key": "work\x06\x163"},
        {"exchange": "", "routing_key": ""},
        {"exchange": "x" * 256, "routing_key": "work"},
    ):
        assert route_of({"tenant_gate_route": bad}, "default") == ("", "default"), bad
