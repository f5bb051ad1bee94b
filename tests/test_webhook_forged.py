# ruff: noqa: F811 - test_webhook's fixtures are imported, and taken as arguments
"""Forged, altered and broken notifications, on every adapter: none is accepted, and
none changes anything in the store (Redis) or queues anything.

One captured, valid notification is the attacker's starting point: its token re-sent
with other body fields is a replay (one token, one notification). Also the HTTP edge
cases: truncated, chunked, at and over the size limit, a key given twice.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
import requests
from test_webhook import (  # noqa: F401 - fixtures shared with test_webhook
    JSON,
    SERVERS,
    Queued,
    celery_app,
    foreign_key,
    post,
    queued,
    receiver,
    served,
)
from workers import wait_until

from celery_tenant_gate.testing import FakeSuperOffice, Reply
from celery_tenant_gate.testing.superoffice import generate_key
from celery_tenant_gate.web.receiver import WebhookReceiver

pytestmark = pytest.mark.redis

CTX = "Cust12345"
AUDIENCE = "my-app"
#: SuperOffice's tenant claim, pinned as a literal (SUPEROFFICE.md).
SUPEROFFICE_CTX_CLAIM = "http://schemes.superoffice.net/identity/ctx"
#: The body of the captured notification: a BackupRestored (1), which changes nothing.
CAPTURED_CHANGE_TYPE = 1


@pytest.fixture(params=list(SERVERS))
def adapter(request: pytest.FixtureRequest, receiver: WebhookReceiver) -> Iterator[str]:
    receiver.verifier.audience = AUDIENCE
    with served(request.param, receiver) as address:
        yield address


def genuine(so: FakeSuperOffice, change_type: int = 2, **claims: Any) -> dict[str, Any]:
    """A valid notification (with the configured audience)."""
    return so.notification(CTX, change_type, claims={"aud": AUDIENCE, **claims})


def _tampered(so: FakeSuperOffice) -> dict[str, Any]:
    body = genuine(so)
    header, payload, signature = body["Token"].split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["exp"] += 3600
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return {**body, "Token": f"{header}.{forged}.{signature}"}


def _small_key(so: FakeSuperOffice) -> dict[str, Any]:
    small = generate_key(1024)
    so.publish_key("small", small.public_key())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyJWT warns when signing with it
        return so.notification(CTX, 2, claims={"aud": AUDIENCE}, key=small, kid="small")


def _iss(so: FakeSuperOffice, iss: str) -> dict[str, Any]:
    return genuine(so, iss=iss)


#: Tokens that are not SuperOffice's valid token for this notification: 401.
FORGED: dict[str, Callable[[FakeSuperOffice], dict[str, Any]]] = {
    "wrong key, SuperOffice's kid": lambda so: so.notification(
        CTX, 2, claims={"aud": AUDIENCE}, key=foreign_key()
    ),
    "alg none": lambda so: so.notification(
        CTX, 2, token=so.sign(so.claims(CTX, aud=AUDIENCE), alg="none")
    ),
    "HS256 keyed with the public key": lambda so: so.notification(
        CTX, 2, token=so.sign(so.claims(CTX, aud=AUDIENCE), alg="HS256", key=so.public_key_pem)
    ),
    "tampered payload": _tampered,
    "expired": lambda so: so.notification(CTX, 2, claims={"aud": AUDIENCE}, expired=True),
    "not yet valid": lambda so: so.notification(
        CTX, 2, claims={"aud": AUDIENCE}, not_yet_valid=True
    ),
    "iat in the future": lambda so: genuine(so, iat=int(so.claims(CTX)["iat"]) + 600),
    "wrong issuer": lambda so: _iss(so, "https://evil.example.com"),
    "issuer with a prefix": lambda so: _iss(so, "https://evil.example.com/" + so.issuer),
    "issuer with a suffix": lambda so: _iss(so, so.issuer + ".evil.example.com"),
    "issuer a part of ours": lambda so: _iss(so, so.issuer[:-2]),
    "wrong audience": lambda so: genuine(so, aud="other-app"),
    "no audience": lambda so: genuine(so, aud=None),
    "no exp": lambda so: genuine(so, exp=None),
    "no iat": lambda so: genuine(so, iat=None),
    "no iss": lambda so: genuine(so, iss=None),
    "another tenant's token": lambda so: {
        **so.notification("Cust999", 2, claims={"aud": AUDIENCE}),
        "ContextIdentifier": CTX,
    },
    "no tenant claim (setting off)": lambda so: so.notification(
        CTX, 2, claims={"aud": AUDIENCE}, ctx_claim=False
    ),
    "unknown kid": lambda so: so.notification(
        CTX, 2, claims={"aud": AUDIENCE}, key=foreign_key(), kid="rotated-maybe"
    ),
    "1024-bit key in the JWKS": _small_key,
    "no token": lambda so: {**genuine(so), "Token": ""},
}


def _as(change_type: int) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda body: {**body, "ChangeType": change_type}


#: The captured notification's token with other body fields: a replay, 409.
REPLAYED: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    **{f"re-sent as ChangeType {n}": _as(n) for n in (0, 2, 3, 4)},
    "re-sent as a Move elsewhere": lambda body: {
        **body,
        "ChangeType": 5,
        "PublicEndpoint": "online9.superoffice.com",
    },
    "re-sent with a PublicEndpoint": lambda body: {
        **body,
        "PublicEndpoint": "online7.superoffice.com",
    },
    "re-sent with another VersionName": lambda body: {**body, "VersionName": "x"},
    "re-sent as is": lambda body: body,
}


def store_snapshot(client: redis.Redis, prefix: str) -> dict[bytes, Any]:
    return {key: client.dump(key) for key in client.scan_iter(match=f"{prefix}:*")}


def raw_post(url: str, head: bytes, body: bytes) -> int | None:
    """Send *head* and *body* as they are, then half-close: the status answered, or
    ``None`` if the server closed without answering."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname or "", parts.port or 80), timeout=10) as sock:
        sock.sendall(
            b"POST " + parts.path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nConnection: close\r\n" + head + b"\r\n" + body
        )
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1]) if answer else None


def test_no_forged_or_replayed_notification_is_accepted_nor_changes_anything(
    adapter: str,
    superoffice: FakeSuperOffice,
    queued: Queued,
    redis_client: redis.Redis,
    key_prefix: str,
) -> None:
    captured = genuine(superoffice, CAPTURED_CHANGE_TYPE)
    assert post(adapter, captured).status_code == 202
    assert [n.change_type for n, _ in queued.calls] == [CAPTURED_CHANGE_TYPE]
    before = store_snapshot(redis_client, key_prefix)
    answers: dict[str, int | None] = {}
    for name, forge in FORGED.items():
        answers[name] = post(adapter, forge(superoffice)).status_code
    for name, alter in REPLAYED.items():
        answers[name] = post(adapter, alter(captured)).status_code
    other_tenant = {**captured, "ContextIdentifier": "Cust777"}
    answers["re-sent for another ContextIdentifier"] = post(adapter, other_tenant).status_code
    limit = 4096  # tenant_gate_webhook_max_body in the fixture
    over = json.dumps(genuine(superoffice)).encode()
    answers["one byte over the limit"] = post(
        adapter, over + b" " * (limit + 1 - len(over))
    ).status_code
    twice = json.dumps(genuine(superoffice)).encode()
    answers["a key given twice"] = post(adapter, b'{"ChangeType": 2, ' + twice[1:]).status_code
    # What came is a whole, valid notification; the rest (40 spaces) never came.
    truncated = json.dumps(genuine(superoffice)).encode()
    answers["truncated body"] = raw_post(
        adapter, f"Content-Length: {len(truncated) + 40}\r\n".encode(), truncated
    )
    chunked = json.dumps(genuine(superoffice)).encode() + b" " * 8000
    answers["chunked body over the limit"] = requests.post(
        adapter, data=iter([chunked[:3000], chunked[3000:]]), headers=JSON, timeout=10
    ).status_code

    assert len(answers) >= 25
    expected = {
        **dict.fromkeys(FORGED, 401),
        **dict.fromkeys(REPLAYED, 409),
        "re-sent for another ContextIdentifier": 401,  # its tenant claim names CTX
        "one byte over the limit": 413,
        "a key given twice": 400,
        "truncated body": 400,
        "chunked body over the limit": 413,
    }
    if answers["truncated body"] is None:  # ASGI: the server saw the client go away
        expected["truncated body"] = None
    assert answers == expected
    assert [n.change_type for n, _ in queued.calls] == [CAPTURED_CHANGE_TYPE]
    assert store_snapshot(redis_client, key_prefix) == before


def test_a_body_of_exactly_the_limit_is_accepted_chunked_or_not(
    adapter: str, superoffice: FakeSuperOffice, queued: Queued
) -> None:
    limit = 4096
    body = json.dumps(genuine(superoffice)).encode()
    assert post(adapter, body + b" " * (limit - len(body))).status_code == 202
    chunked = json.dumps(genuine(superoffice)).encode()
    chunked += b" " * (limit - len(chunked))
    response = requests.post(
        adapter, data=iter([chunked[:1000], chunked[1000:]]), headers=JSON, timeout=10
    )
    assert response.status_code == 202
    assert queued.tenants == [CTX, CTX]


def test_the_http_answers_say_why(
    adapter: str, superoffice: FakeSuperOffice, queued: Queued
) -> None:
    twice = json.dumps(genuine(superoffice)).encode()
    answer = post(adapter, b'{"ChangeType": 2, ' + twice[1:])
    assert answer.json() == {"error": "appears more than once", "field": "ChangeType"}
    captured = genuine(superoffice)
    assert post(adapter, captured).status_code == 202
    assert post(adapter, {**captured, "ChangeType": 4}).json() == {
        "error": "this token was used before"
    }
    assert post(adapter, {**captured, "Token": "x.y.z"}).json() == {"error": "invalid token"}
    assert queued.tenants == [CTX]


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_a_new_kid_waits_for_its_fetch_and_no_other_request_does(
    kind: str, receiver: WebhookReceiver, superoffice: FakeSuperOffice, queued: Queued
) -> None:
    new_key = generate_key()
    with served(kind, receiver) as address:
        assert post(address, superoffice.notification("Cust1", 2)).status_code == 202
        superoffice.publish_key("next", new_key.public_key())
        held = threading.Event()
        superoffice.script_jwks(Reply(release=held))  # the fetch hangs until told
        rotated = superoffice.notification("Cust2", 2, key=new_key, kid="next")
        answers: list[int] = []
        waiting = threading.Thread(
            target=lambda: answers.append(post(address, rotated).status_code)
        )
        waiting.start()
        wait_until(lambda: superoffice.jwks_fetches == 2, what="the fetch asked for")
        for n in range(3, 13):  # answered while the fetch hangs: none waited for it
            assert post(address, superoffice.notification(f"Cust{n}", 2)).status_code == 202
        assert answers == [] and not held.is_set()
        held.set()
        waiting.join(10)
    assert answers == [202]
    assert sorted(queued.tenants) == sorted(f"Cust{n}" for n in range(1, 13))
