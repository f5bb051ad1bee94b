"""SuperOffice's six ChangeType numbers, pinned with literal bodies, end to end: the
body the webhook receives, the control task it queues, what that task does to the
tenant (in process, against the fake State API and the real Redis store).

The numbers and names are SuperOffice's (SUPEROFFICE.md), never the code's enum:
swapping two members of ``ChangeType`` must fail here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import gateapp
import pytest
from workers import worker_env

from celery_tenant_gate import gate_for
from celery_tenant_gate.gate.gate import Gate
from celery_tenant_gate.model.notification import Notification
from celery_tenant_gate.testing import FakeSuperOffice
from celery_tenant_gate.web.factory import control_kwargs, receiver_for
from celery_tenant_gate.web.receiver import WebhookReceiver
from celery_tenant_gate.worker.control import apply_notification

pytestmark = pytest.mark.redis


@pytest.fixture
def wired(
    redis_url: str, key_prefix: str, superoffice: FakeSuperOffice
) -> Iterator[tuple[WebhookReceiver, Gate, list[str]]]:
    """The app's webhook receiver, its control task applied at once on the app's gate."""
    env = {
        **worker_env(redis_url, redis_url, key_prefix, superoffice),
        "GATE_JWKS": superoffice.jwks_url,
        "GATE_ISSUER": superoffice.issuer,
    }
    app = gateapp.make_app(env)
    gate = gate_for(app)
    receiver = receiver_for(app)
    outcomes: list[str] = []

    def apply(notification: Notification, claims: dict[str, Any]) -> None:
        outcomes.append(apply_notification(gate, **control_kwargs(notification, claims)))

    receiver.enqueue = apply
    yield receiver, gate, outcomes


def literal(change_type: int, ctx: str, token: str, extra: str = "") -> bytes:
    """A body written out as SuperOffice sends it, the number as a literal."""
    return (
        f'{{"ChangeType": {change_type}, "ContextIdentifier": "{ctx}", '
        f'"VersionName": "Release 10.3.8", "FileVersion": "10.3.8.2024", '
        f'"Token": "{token}"{extra}}}'
    ).encode()


def post(receiver: WebhookReceiver, body: bytes) -> int:
    json.loads(body)  # the literal is JSON
    return receiver.handle("POST", "application/json", body, len(body)).status


def test_the_six_change_types_do_what_superoffice_means(
    wired: tuple[WebhookReceiver, Gate, list[str]], superoffice: FakeSuperOffice
) -> None:
    receiver, gate, outcomes = wired
    for n in range(1, 7):
        superoffice.set_state(f"Cust{n}", "Running", valid_for=60)
    for n in range(1, 7):
        gate.state(f"Cust{n}")  # known, as Running
    superoffice.set_state("Cust5", "Deleted", valid_for=60)
    # Cust6 moved: the State API says so (the notification's PublicEndpoint only hints).
    superoffice.set_state(
        "Cust6", "Running", valid_for=60, endpoint="https://online9.superoffice.com"
    )
    gate.pause("Cust4", reason="an earlier Suspend", by="webhook")

    def token(ctx: str) -> str:
        # Issued after the look-ups above (iat has whole seconds; one ahead is in the
        # leeway, and the notification's time is then when it was received).
        return superoffice.sign(superoffice.claims(ctx, iat=int(time.time()) + 1))

    move = ', "PublicEndpoint": "online9.superoffice.com"'
    bodies = [
        literal(0, "Cust1", token("Cust1")),  # Upgrade
        literal(1, "Cust2", token("Cust2")),  # BackupRestored
        literal(2, "Cust3", token("Cust3")),  # Suspend
        literal(3, "Cust4", token("Cust4")),  # Resume
        literal(4, "Cust5", token("Cust5")),  # Delete
        literal(5, "Cust6", token("Cust6"), move),  # Move
    ]
    assert [post(receiver, body) for body in bodies] == [202] * 6
    assert outcomes[0] == "paused"  # Upgrade
    assert outcomes[1] == "backup restored: state re-checked"  # BackupRestored
    assert outcomes[2] == "paused"  # Suspend
    assert outcomes[3].startswith("resumed")  # Resume
    assert outcomes[4].startswith("deleted")  # Delete
    assert outcomes[5] == "moved to online9.superoffice.com (the State API agrees)"  # Move

    def record(ctx: str) -> Any:
        return gate.state(ctx, look_up=False).record

    assert record("Cust1").paused and record("Cust3").paused
    assert not record("Cust2").paused and not record("Cust4").paused
    assert record("Cust6").state.endpoint == "https://online9.superoffice.com/Cust6"
