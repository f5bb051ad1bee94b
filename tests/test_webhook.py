"""The webhook over real HTTP: good notifications are queued once; nothing else is.

Plain WSGI (werkzeug's server) and plain ASGI (uvicorn) get the whole matrix; Django, Flask,
FastAPI and Starlette, each also served for real, get the main answers.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import socket
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import cache
from typing import Any

import pytest
import redis
import requests
import uvicorn
from celery import Celery
from cryptography.hazmat.primitives.asymmetric import rsa
from werkzeug.serving import make_server
from workers import wait_until

from celery_tenant_gate.model.notification import Notification
from celery_tenant_gate.testing import FakeSuperOffice
from celery_tenant_gate.testing.superoffice import CTX_CLAIM, generate_key
from celery_tenant_gate.web import DEFAULT_PATH
from celery_tenant_gate.web.asgi import make_asgi_app
from celery_tenant_gate.web.factory import CONTROL_TASK, receiver_for
from celery_tenant_gate.web.receiver import WebhookReceiver
from celery_tenant_gate.web.wsgi import make_wsgi_app

pytestmark = pytest.mark.redis

CTX = "Cust12345"
JSON = {"Content-Type": "application/json"}
JSON_TYPE = b"application/json"


@cache
def foreign_key() -> rsa.RSAPrivateKey:
    return generate_key()


# -- serving for real -----------------------------------------------------------------


@contextmanager
def serve_wsgi(app: Any) -> Iterator[str]:
    """werkzeug's threaded server: it decodes chunked bodies (``wsgi.input_terminated``),
    as gunicorn does; wsgiref does not."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        assert not thread.is_alive(), "the WSGI server did not stop"


@contextmanager
def serve_asgi(app: Any) -> Iterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop"


_django_urls = types.ModuleType("tenant_gate_test_urls")


def django_app(receiver: WebhookReceiver) -> Any:
    import django
    from django.conf import settings
    from django.urls import clear_url_caches, path

    if not settings.configured:
        sys.modules[_django_urls.__name__] = _django_urls
        settings.configure(
            DEBUG=False,
            SECRET_KEY="test",
            ALLOWED_HOSTS=["127.0.0.1"],
            ROOT_URLCONF=_django_urls.__name__,
            # The CSRF middleware is on, as in any Django project: the view is exempt.
            MIDDLEWARE=["django.middleware.csrf.CsrfViewMiddleware"],
        )
        django.setup()
    from django.core.handlers.wsgi import WSGIHandler

    from celery_tenant_gate.web.django import webhook_view

    _django_urls.urlpatterns = [path(DEFAULT_PATH.lstrip("/"), webhook_view(receiver))]  # type: ignore[attr-defined]
    clear_url_caches()
    return WSGIHandler()


def flask_app(receiver: WebhookReceiver) -> Any:
    from flask import Flask

    from celery_tenant_gate.web.flask import webhook_blueprint

    app = Flask(__name__)
    app.register_blueprint(webhook_blueprint(receiver))
    return app


def fastapi_app(receiver: WebhookReceiver) -> Any:
    from fastapi import FastAPI

    from celery_tenant_gate.web.starlette import webhook_router

    app = FastAPI()
    app.include_router(webhook_router(receiver))
    return app


def starlette_app(receiver: WebhookReceiver) -> Any:
    from starlette.applications import Starlette

    from celery_tenant_gate.web.starlette import webhook_route

    return Starlette(routes=[webhook_route(receiver)])


SERVERS: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {
    "wsgi": (make_wsgi_app, serve_wsgi),
    "asgi": (make_asgi_app, serve_asgi),
    "django": (django_app, serve_wsgi),
    "flask": (flask_app, serve_wsgi),
    "fastapi": (fastapi_app, serve_asgi),
    "starlette": (starlette_app, serve_asgi),
}


# -- the app, the receiver and what it queued -----------------------------------------


class Queued:
    """Records what the receiver queued; can be told to fail."""

    def __init__(self) -> None:
        self.calls: list[tuple[Notification, dict[str, Any]]] = []
        self.failing = False

    def __call__(self, notification: Notification, claims: dict[str, Any]) -> None:
        if self.failing:
            raise ConnectionError("broker down")
        self.calls.append((notification, claims))

    @property
    def tenants(self) -> list[str]:
        return [notification.context_id for notification, _ in self.calls]


@pytest.fixture
def celery_app(redis_url: str, key_prefix: str, superoffice: FakeSuperOffice) -> Celery:
    app = Celery("webhook-test", broker=redis_url, set_as_current=False)
    app.conf.update(
        tenant_gate_redis_url=redis_url,
        tenant_gate_key_prefix=key_prefix,
        tenant_gate_webhook_jwks_url=superoffice.jwks_url,
        tenant_gate_webhook_issuer=superoffice.issuer,
        tenant_gate_webhook_jwks_allow_http=True,
        tenant_gate_control_queue=f"{key_prefix}.control",
        tenant_gate_webhook_max_body=4096,
    )
    return app


@pytest.fixture
def queued() -> Queued:
    return Queued()


@pytest.fixture
def receiver(celery_app: Celery, queued: Queued) -> WebhookReceiver:
    """The app's receiver (its verifier and Redis replay guard) queuing into a list."""
    receiver = receiver_for(celery_app)
    receiver.enqueue = queued
    return receiver


@contextmanager
def served(kind: str, receiver: WebhookReceiver) -> Iterator[str]:
    make, serve = SERVERS[kind]
    with serve(make(receiver)) as base:
        yield base + DEFAULT_PATH


@pytest.fixture(params=["wsgi", "asgi"])
def url(request: pytest.FixtureRequest, receiver: WebhookReceiver) -> Iterator[str]:
    with served(request.param, receiver) as address:
        yield address


@pytest.fixture(params=list(SERVERS))
def any_url(request: pytest.FixtureRequest, receiver: WebhookReceiver) -> Iterator[str]:
    with served(request.param, receiver) as address:
        yield address


def post(url: str, document: Any, headers: dict[str, str] | None = None) -> requests.Response:
    data = document if isinstance(document, bytes) else json.dumps(document).encode()
    return requests.post(url, data=data, headers=JSON if headers is None else headers, timeout=10)


# -- what is accepted -------------------------------------------------------------------


def test_a_signed_notification_is_queued(
    any_url: str, superoffice: FakeSuperOffice, queued: Queued
) -> None:
    response = post(
        any_url, superoffice.notification(CTX, 5, public_endpoint="online7.superoffice.com")
    )
    assert (response.status_code, response.json()) == (202, {"status": "accepted"})
    assert response.headers["Content-Type"] == "application/json"
    [(notification, claims)] = queued.calls
    assert (notification.context_id, notification.change_type) == (CTX, 5)
    assert notification.public_endpoint == "online7.superoffice.com"
    assert claims[CTX_CLAIM] == CTX


def test_a_charset_parameter_is_allowed(
    url: str, superoffice: FakeSuperOffice, queued: Queued
) -> None:
    headers = {"Content-Type": "application/json; charset=UTF-8"}
    assert post(url, superoffice.notification(CTX, 2), headers).status_code == 202
    assert queued.tenants == [CTX]


def test_the_same_notification_twice_is_queued_once(
    any_url: str, superoffice: FakeSuperOffice, queued: Queued
) -> None:
    body = superoffice.notification(CTX, 2)
    first, second = post(any_url, body), post(any_url, body)
    assert (first.status_code, first.json()) == (202, {"status": "accepted"})
    assert (second.status_code, second.json()) == (409, {"error": "this token was used before"})
    assert queued.tenants == [CTX]


def test_a_replay_in_another_spelling_of_its_token_is_still_a_replay(
    url: str, superoffice: FakeSuperOffice, queued: Queued
) -> None:
    body = superoffice.notification(CTX, 2)
    header, payload, signature = body["Token"].split(".")
    padded = {**body, "Token": f"{header}.{payload}.{signature}=="}
    assert len(signature) % 4 == 2  # so "==" is its padding, which is accepted
    # The unused low bits of the signature's last character: the same bytes, another text.
    last = BASE64URL.index(signature[-1])
    respelled = {**body, "Token": f"{header}.{payload}.{signature[:-1]}{BASE64URL[last ^ 1]}"}
    answers = [post(url, document) for document in (body, padded, respelled)]
    assert [a.status_code for a in answers] == [202, 409, 401]
    assert queued.tenants == [CTX]


BASE64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def test_replays_are_remembered_in_redis_for_the_tokens_lifetime(
    url: str,
    superoffice: FakeSuperOffice,
    redis_client: redis.Redis,
    key_prefix: str,
) -> None:
    assert post(url, superoffice.notification(CTX, 2)).status_code == 202
    [key] = redis_client.scan_iter(match=f"{key_prefix}:seen:*")
    assert 300 < redis_client.ttl(key) <= 360  # a 300 s token, and 60 s of leeway


def test_one_token_is_acted_on_once_whatever_body_it_comes_with(
    url: str, superoffice: FakeSuperOffice, receiver: WebhookReceiver, queued: Queued
) -> None:
    receiver.verifier.tenant_claim_required = False  # tenant_gate_webhook_tokens_without_tenant
    token = superoffice.sign(superoffice.claims(None))
    assert post(url, superoffice.notification("Cust1", 2, token=token)).status_code == 202
    assert post(url, superoffice.notification("Cust2", 2, token=token)).status_code == 409
    assert post(url, superoffice.notification("Cust1", 4, token=token)).status_code == 409
    assert queued.tenants == ["Cust1"]


@pytest.mark.parametrize("without_tenant", [False, True])
def test_a_token_without_tenant_claim_is_refused_unless_the_setting_says_so(
    celery_app: Celery, superoffice: FakeSuperOffice, queued: Queued, without_tenant: bool
) -> None:
    celery_app.conf.tenant_gate_webhook_tokens_without_tenant = without_tenant
    receiver = receiver_for(celery_app)
    receiver.enqueue = queued
    token = superoffice.sign(superoffice.claims(None))
    with served("wsgi", receiver) as address:
        response = post(address, superoffice.notification("Cust1", 2, token=token))
    assert response.status_code == (202 if without_tenant else 401)
    assert queued.tenants == (["Cust1"] if without_tenant else [])


def test_when_queuing_fails_the_answer_is_503_and_the_retry_is_queued(
    any_url: str, superoffice: FakeSuperOffice, queued: Queued
) -> None:
    body = superoffice.notification(CTX, 4)
    queued.failing = True
    response = post(any_url, body)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert queued.calls == []
    queued.failing = False
    assert post(any_url, body).json() == {"status": "accepted"}
    assert queued.tenants == [CTX]


def test_when_redis_is_down_the_answer_is_503(
    url: str, superoffice: FakeSuperOffice, receiver: WebhookReceiver, queued: Queued
) -> None:
    def broken(fingerprint: str, ttl: float) -> bool:
        raise redis.ConnectionError("redis down")

    receiver.seen_before = broken
    assert post(url, superoffice.notification(CTX, 2)).status_code == 503
    assert queued.calls == []


# -- forged and invalid tokens: 401, nothing queued ----------------------------------------


def _tampered(superoffice: FakeSuperOffice) -> dict[str, Any]:
    body = superoffice.notification("Cust666", 4)
    header, payload, signature = superoffice.sign(superoffice.claims(CTX)).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims[CTX_CLAIM] = "Cust666"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    body["Token"] = f"{header}.{forged}.{signature}"
    return body


FORGERIES: dict[str, Callable[[FakeSuperOffice], dict[str, Any]]] = {
    "alg none": lambda so: so.notification(CTX, token=so.sign(so.claims(CTX), alg="none")),
    "HS256 keyed with the public key": lambda so: so.notification(
        CTX, token=so.sign(so.claims(CTX), alg="HS256", key=so.public_key_pem)
    ),
    "foreign key, same kid": lambda so: so.notification(CTX, key=foreign_key()),
    "unknown kid": lambda so: so.notification(CTX, kid="not-published", key=foreign_key()),
    "tampered payload": _tampered,
    "wrong issuer": lambda so: so.notification(CTX, claims={"iss": "https://evil.example"}),
    "expired": lambda so: so.notification(CTX, expired=True),
    "not yet valid": lambda so: so.notification(CTX, not_yet_valid=True),
    "ctx claim of another tenant": lambda so: so.notification(CTX, claims={CTX_CLAIM: "Cust999"}),
    "no exp": lambda so: so.notification(CTX, claims={"exp": None}),
    "not a JWT": lambda so: so.notification(CTX, token="not-a-jwt"),
}


@pytest.mark.parametrize("forgery", list(FORGERIES))
def test_a_forged_token_is_refused(
    url: str,
    superoffice: FakeSuperOffice,
    queued: Queued,
    forgery: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    body = FORGERIES[forgery](superoffice)
    with caplog.at_level(logging.WARNING, logger="celery_tenant_gate.web.receiver"):
        response = post(url, body)
    assert (response.status_code, response.json()) == (401, {"error": "invalid token"})
    assert queued.calls == []
    [record] = [r for r in caplog.records if r.name == "celery_tenant_gate.web.receiver"]
    assert record.levelno == logging.WARNING
    assert body["ContextIdentifier"] in record.getMessage()


def test_a_wrong_audience_is_refused_when_one_is_configured(
    url: str, superoffice: FakeSuperOffice, receiver: WebhookReceiver, queued: Queued
) -> None:
    receiver.verifier.audience = "my-app"
    assert post(url, superoffice.notification(CTX, claims={"aud": "other"})).status_code == 401
    assert post(url, superoffice.notification(CTX)).status_code == 401
    assert post(url, superoffice.notification(CTX, claims={"aud": "my-app"})).status_code == 202
    assert queued.tenants == [CTX]


def test_unknown_kids_refetch_the_jwks_at_most_once_per_10_seconds(
    url: str, superoffice: FakeSuperOffice, queued: Queued
) -> None:
    assert post(url, superoffice.notification(CTX)).status_code == 202
    for _ in range(10):
        body = superoffice.notification(CTX, kid="rotated?", key=foreign_key())
        assert post(url, body).status_code == 401
    assert superoffice.jwks_fetches == 2  # at start, and once for the unknown kid
    assert queued.tenants == [CTX]


@pytest.mark.parametrize("token", [None, ""])
def test_a_missing_token_is_401(
    any_url: str, superoffice: FakeSuperOffice, queued: Queued, token: str | None
) -> None:
    body = superoffice.notification(CTX)
    if token is None:
        del body["Token"]
    else:
        body["Token"] = token
    response = post(any_url, body)
    assert response.status_code == 401
    assert response.json() == {"error": "invalid token"}
    assert queued.calls == []


# -- bad requests: 4xx, nothing queued ---------------------------------------------------------


def test_only_post_is_allowed(any_url: str, queued: Queued) -> None:
    for method in ("GET", "PUT", "DELETE"):
        response = requests.request(method, any_url, timeout=10)
        assert response.status_code == 405, method
        assert response.headers["Allow"] == "POST"
    assert queued.calls == []


def test_an_oversized_body_is_refused(
    any_url: str, superoffice: FakeSuperOffice, queued: Queued
) -> None:
    body = superoffice.notification(CTX, version_name="x" * 5000)
    assert post(any_url, body).status_code == 413
    assert queued.calls == []


def test_an_oversized_chunked_body_is_refused_over_asgi(
    receiver: WebhookReceiver, queued: Queued
) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(100):
            yield b" " * 1024

    with served("asgi", receiver) as address:
        response = requests.post(address, data=chunks(), headers=JSON, timeout=10)
    assert response.status_code == 413
    assert queued.calls == []


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/jsonx", "application/json; charset=latin-1", "text/json"],
)
def test_a_body_that_is_not_declared_json_is_refused(
    url: str, superoffice: FakeSuperOffice, queued: Queued, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    assert post(url, superoffice.notification(CTX), headers).status_code == 415
    assert queued.calls == []


BAD_BODIES: dict[str, tuple[Callable[[FakeSuperOffice], Any], str | None]] = {
    "not JSON": (lambda so: b"{not json", None),
    "empty": (lambda so: b"", None),
    "an array": (lambda so: [so.notification(CTX)], None),
    "deep nesting": (lambda so: {**so.notification(CTX), "X": [[[[[[[[1]]]]]]]]}, None),
    "ChangeType a string": (lambda so: {**so.notification(CTX), "ChangeType": "2"}, "ChangeType"),
    "ChangeType a bool": (lambda so: {**so.notification(CTX), "ChangeType": True}, "ChangeType"),
    "ChangeType a float": (lambda so: {**so.notification(CTX), "ChangeType": 2.0}, "ChangeType"),
    "ChangeType unknown": (lambda so: {**so.notification(CTX), "ChangeType": 9}, "ChangeType"),
    "VersionName a number": (lambda so: {**so.notification(CTX), "VersionName": 10}, "VersionName"),
    "bad tenant id": (lambda so: so.notification("Cust1/../../x"), "ContextIdentifier"),
    "tenant id not a string": (
        lambda so: {**so.notification(CTX), "ContextIdentifier": 12345},
        "ContextIdentifier",
    ),
    "no tenant id": (
        lambda so: {**so.notification(CTX), "ContextIdentifier": None},
        "ContextIdentifier",
    ),
    "PublicEndpoint not SuperOffice": (
        lambda so: so.notification(CTX, 5, public_endpoint="evil.example.com"),
        "PublicEndpoint",
    ),
    "PublicEndpoint a URL": (
        lambda so: so.notification(CTX, 5, public_endpoint="https://online3.superoffice.com/x"),
        "PublicEndpoint",
    ),
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_a_bad_body_is_refused_naming_the_field(
    url: str, superoffice: FakeSuperOffice, queued: Queued, case: str
) -> None:
    make, field = BAD_BODIES[case]
    response = post(url, make(superoffice))
    assert response.status_code == 400
    assert response.json().get("field") == field
    assert response.json()["error"]
    assert queued.calls == []


# -- reading no more than needed ------------------------------------------------------------


class CountingStream(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.taken = 0

    def read(self, size: int | None = -1) -> bytes:
        chunk = super().read(size)
        self.taken += len(chunk)
        return chunk


def test_the_wsgi_adapter_reads_at_most_one_byte_past_the_limit(receiver: WebhookReceiver) -> None:
    app = make_wsgi_app(receiver)
    stream = CountingStream(b"x" * 100_000)
    environ = {
        "REQUEST_METHOD": "POST",
        "CONTENT_TYPE": "application/json",
        "wsgi.input": stream,
        "wsgi.input_terminated": True,  # a chunked body: no Content-Length
    }
    statuses: list[str] = []
    app(environ, lambda status, headers: statuses.append(status))
    assert statuses == ["413 Request Entity Too Large"]
    assert stream.taken == receiver.max_body + 1
    stream = CountingStream(b"x" * 100_000)
    app({**environ, "wsgi.input": stream, "CONTENT_LENGTH": "100000"}, lambda s, h: None)
    assert stream.taken == 0  # Content-Length already says too much


# -- the wiring ---------------------------------------------------------------------------------


def test_the_control_task_is_sent_to_the_control_queue(
    celery_app: Celery, superoffice: FakeSuperOffice
) -> None:
    with served("wsgi", receiver_for(celery_app)) as address:
        body = superoffice.notification(CTX, 5, public_endpoint="online9.superoffice.com")
        before = time.time()
        assert post(address, body).json() == {"status": "accepted"}
    queue_name = celery_app.conf.tenant_gate_control_queue
    with celery_app.connection_for_read() as conn:
        queue = conn.SimpleQueue(queue_name)
        message = queue.get(timeout=5)
        message.ack()
        queue.close()
    assert message.headers["task"] == CONTROL_TASK
    _args, kwargs, _embed = message.decode()
    received_at = kwargs.pop("received_at")
    assert before <= received_at <= time.time()
    assert kwargs == {
        "change_type": 5,
        "context_id": CTX,
        "public_endpoint": "online9.superoffice.com",
        "version_name": "Release 10.3.8",
        "file_version": "10.3.8.2024",
        "token_iat": pytest.approx(time.time(), abs=60),
    }


def test_an_unreachable_broker_is_503_and_the_notification_is_not_remembered(
    celery_app: Celery, superoffice: FakeSuperOffice, redis_client: redis.Redis, key_prefix: str
) -> None:
    celery_app.conf.broker_url = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    with served("wsgi", receiver_for(celery_app)) as address:
        response = post(address, superoffice.notification(CTX, 2))
    assert response.status_code == 503
    assert list(redis_client.scan_iter(f"{key_prefix}:seen:*")) == []


def test_the_kept_broker_connections_survive_the_broker_dropping_them(
    celery_app: Celery, superoffice: FakeSuperOffice
) -> None:
    from celery_tenant_gate.testing import EmbeddedRedis

    with EmbeddedRedis() as broker:
        celery_app.conf.broker_url = broker.url
        queue_name = celery_app.conf.tenant_gate_control_queue
        client = redis.Redis.from_url(broker.url)
        with served("asgi", receiver_for(celery_app)) as address:
            for n in range(3):
                assert post(address, superoffice.notification(f"Cust{n + 1}", 2)).status_code == 202
            assert client.client_kill_filter(_type="normal", skipme=True) >= 1
            for n in range(3, 6):
                assert post(address, superoffice.notification(f"Cust{n + 1}", 2)).status_code == 202
        assert client.llen(queue_name) == 6
        client.close()


@pytest.mark.parametrize("broker", ["the store's redis", "a redis of its own"])
def test_when_the_control_queue_refuses_the_answer_is_503_and_nothing_is_recorded(
    celery_app: Celery,
    superoffice: FakeSuperOffice,
    redis_client: redis.Redis,
    key_prefix: str,
    broker: str,
) -> None:
    from celery_tenant_gate.testing import EmbeddedRedis

    with contextlib.ExitStack() as stack:
        if broker == "a redis of its own":
            celery_app.conf.broker_url = stack.enter_context(EmbeddedRedis()).url
        queue = redis.Redis.from_url(celery_app.conf.broker_url)
        stack.callback(queue.close)
        queue_name = celery_app.conf.tenant_gate_control_queue
        queue.set(queue_name, "not a list")  # every LPUSH to it fails
        body = superoffice.notification(CTX, 2)
        with served("asgi", receiver_for(celery_app)) as address:
            response = post(address, body)
            assert (response.status_code, response.headers["Retry-After"]) == (503, "5")
            assert list(redis_client.scan_iter(f"{key_prefix}:seen:*")) == []
            queue.delete(queue_name)
            assert post(address, body).json() == {"status": "accepted"}  # SuperOffice's retry
            assert post(address, body).status_code == 409  # the token was used
        assert queue.llen(queue_name) == 1
        queue.delete(queue_name, f"_kombu.binding.{queue_name}")


def test_task_publish_signals_see_every_control_task(
    celery_app: Celery, superoffice: FakeSuperOffice, redis_client: redis.Redis
) -> None:
    # Tracing libraries add their headers in before_task_publish: while anything
    # listens, the control task goes through kombu, as any task would.
    from celery import signals

    seen: list[str] = []

    def before(sender: str, headers: dict[str, Any], **kwargs: Any) -> None:
        headers["traceparent"] = "00-trace-span-01"
        seen.append(sender)

    signals.before_task_publish.connect(before, weak=False)
    try:
        with served("asgi", receiver_for(celery_app)) as address:
            for n in range(3):
                assert post(address, superoffice.notification(f"Cust{n + 1}", 2)).ok
    finally:
        signals.before_task_publish.disconnect(before)
    assert seen == [CONTROL_TASK] * 3
    queue_name = celery_app.conf.tenant_gate_control_queue
    messages = [json.loads(raw) for raw in redis_client.lrange(queue_name, 0, -1)]
    assert [m["headers"]["traceparent"] for m in messages] == ["00-trace-span-01"] * 3
    redis_client.delete(queue_name, f"_kombu.binding.{queue_name}")


def test_requests_answered_together_each_get_their_own_answer(
    celery_app: Celery, superoffice: FakeSuperOffice, redis_client: redis.Redis
) -> None:
    # The ASGI adapter hands the requests that wait to the receiver together (one
    # Redis round trip for all); each must still get the answer that is its own.
    good = [superoffice.notification(f"Cust{n + 1}", 2) for n in range(12)]
    forged = [superoffice.notification(f"Cust{n + 1}", 2, key=generate_key()) for n in range(6)]
    bodies = good + good[:6] + forged + [{"ContextIdentifier": "Cust1"}] * 2
    with served("asgi", receiver_for(celery_app)) as address:
        start = threading.Barrier(len(bodies))

        def send(body: dict[str, Any]) -> requests.Response:
            start.wait(10)
            return post(address, body)

        with ThreadPoolExecutor(len(bodies)) as pool:
            answers = list(pool.map(send, bodies))
    statuses = [a.status_code for a in answers]
    assert statuses[18:] == [401] * 6 + [400] * 2
    # Each notification once: accepted by one of its two deliveries, refused by the other.
    for n in range(6):
        assert sorted([statuses[n], statuses[12 + n]]) == [202, 409]
    assert statuses[6:12] == [202] * 6
    queue_name = celery_app.conf.tenant_gate_control_queue
    tenants = sorted(
        json.loads(base64.b64decode(json.loads(raw)["body"]))[1]["context_id"]
        for raw in redis_client.lrange(queue_name, 0, -1)
    )
    assert tenants == sorted(f"Cust{n + 1}" for n in range(12))
    redis_client.delete(queue_name, f"_kombu.binding.{queue_name}")


def test_handle_many_answers_in_order(
    celery_app: Celery, superoffice: FakeSuperOffice, redis_client: redis.Redis
) -> None:
    from celery_tenant_gate.web.receiver import WebhookRequest

    receiver = receiver_for(celery_app)
    one, two = superoffice.notification("Cust1", 2), superoffice.notification("Cust2", 0)
    requests_ = [
        WebhookRequest("POST", "application/json", json.dumps(body).encode(), None)
        for body in (one, {"ChangeType": 0}, two, one)
    ] + [WebhookRequest("GET", None, None, None)]
    answers = receiver.handle_many(requests_)
    assert [a.status for a in answers] == [202, 400, 202, 409, 405]
    queue_name = celery_app.conf.tenant_gate_control_queue
    assert redis_client.llen(queue_name) == 2
    redis_client.delete(queue_name, f"_kombu.binding.{queue_name}")


def test_receiver_for_is_cached_on_the_app(celery_app: Celery) -> None:
    assert receiver_for(celery_app) is receiver_for(celery_app)


def test_a_public_key_can_replace_the_jwks(
    celery_app: Celery, superoffice: FakeSuperOffice, queued: Queued
) -> None:
    celery_app.conf.tenant_gate_webhook_jwks_url = None
    celery_app.conf.tenant_gate_webhook_public_key = superoffice.certificate_pem
    receiver = receiver_for(celery_app)
    receiver.enqueue = queued
    with served("asgi", receiver) as address:
        assert post(address, superoffice.notification(CTX)).status_code == 202
    assert superoffice.jwks_fetches == 0
    assert queued.tenants == [CTX]


def test_both_key_sources_at_once_is_a_config_error(
    celery_app: Celery, superoffice: FakeSuperOffice
) -> None:
    from celery_tenant_gate.model.errors import ConfigError

    celery_app.conf.tenant_gate_webhook_public_key = superoffice.public_key_pem
    with pytest.raises(ConfigError, match="tenant_gate_webhook_jwks_url"):
        receiver_for(celery_app)


def test_a_web_process_imports_no_worker_module() -> None:
    code = """
import sys
from celery import Celery
from celery_tenant_gate.web.wsgi import make_wsgi_app
from celery_tenant_gate.web.asgi import make_asgi_app
import celery_tenant_gate.web.django, celery_tenant_gate.web.flask
import celery_tenant_gate.web.starlette
app = Celery("web", broker="redis://127.0.0.1:1/0", set_as_current=False)
make_wsgi_app(app); make_asgi_app(app)
worker_side = ["worker", "gate", "app", "admin", "observe", "io.broker.redis_held"]
print([m for m in worker_side if "celery_tenant_gate." + m in sys.modules])
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_missing_frameworks_name_the_extra_to_install() -> None:
    code = """
import sys
sys.modules["django"] = None; sys.modules["flask"] = None; sys.modules["starlette"] = None
for name, extra in [("django", "django"), ("flask", "flask"), ("starlette", "fastapi")]:
    try:
        __import__("celery_tenant_gate.web." + name)
    except ImportError as exc:
        assert f"pip install 'celery-tenant-gate[{extra}]'" in str(exc), exc
    else:
        raise SystemExit(name + " imported")
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.stdout.strip() == "ok", result.stderr


@pytest.mark.rabbitmq
def test_on_rabbitmq_every_202_is_a_control_task_the_broker_confirmed(
    celery_app: Celery, superoffice: FakeSuperOffice, amqp_url: str
) -> None:
    from kombu import Connection

    celery_app.conf.broker_url = amqp_url
    queue_name = celery_app.conf.tenant_gate_control_queue
    try:
        with served("asgi", receiver_for(celery_app)) as address:
            for n in range(5):
                assert post(address, superoffice.notification(f"Cust{n + 1}", 2)).status_code == 202
        with Connection(amqp_url) as connection:
            _, ready, _ = connection.default_channel.queue_declare(queue_name, passive=True)
        assert ready == 5  # confirmed before each 202: already in the queue
    finally:
        with Connection(amqp_url) as connection:
            connection.default_channel.queue_delete(queue_name)


def test_middleware_that_changes_an_answers_headers_changes_that_answer_only(
    receiver: WebhookReceiver, superoffice: FakeSuperOffice, queued: Queued
) -> None:
    # ASGI middleware may change a response's headers in place (GZip does); the
    # 202 answers are made once and shared, so each request must get a list of its own.
    webhook = make_asgi_app(receiver)

    async def stamping(scope: Any, receive: Any, send: Any) -> None:
        async def stamp(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"].append((b"x-stamp", b"1"))
            await send(message)

        await webhook(scope, receive, stamp)

    with serve_asgi(stamping) as address:
        answers = [
            requests.post(address, json=superoffice.notification(f"Cust{n}", 2), timeout=10)
            for n in range(3)
        ]
    assert [(a.status_code, a.headers["x-stamp"]) for a in answers] == [(202, "1")] * 3
    assert queued.tenants == ["Cust0", "Cust1", "Cust2"]


def test_an_event_loop_closed_while_a_batch_is_with_the_receiver_lets_go_of_its_thread(
    receiver: WebhookReceiver, superoffice: FakeSuperOffice
) -> None:
    import asyncio
    import gc

    started, carry_on = threading.Event(), threading.Event()
    handle_many = receiver.handle_many

    def slow(requests: Any, **options: Any) -> Any:
        started.set()
        carry_on.wait(10)
        return handle_many(requests, **options)

    receiver.handle_many = slow  # type: ignore[method-assign]
    app = make_asgi_app(receiver)

    def threads() -> int:
        return sum(t.name.startswith("tenant-gate-webhook") for t in threading.enumerate())

    before = threads()

    async def post(n: int) -> None:
        body = json.dumps(superoffice.notification(f"Cust{n}", 2)).encode()
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        scope = {"type": "http", "method": "POST", "headers": [(b"content-type", JSON_TYPE)]}

        async def receive() -> Any:
            return messages.pop(0)

        async def send(message: Any) -> None:
            pass

        await app(scope, receive, send)

    async def close_while_busy() -> None:
        first = asyncio.ensure_future(post(1))  # with the receiver...
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
        second = asyncio.ensure_future(post(2))  # ... and one waiting for the next batch
        await asyncio.sleep(0)  # lets it join the waiting ones, nothing to wait on
        assert not first.done() and not second.done()
        for client in (first, second):  # the clients go away; the batch goes on
            client.cancel()
        await asyncio.gather(first, second, return_exceptions=True)

    loop = asyncio.new_event_loop()
    loop.run_until_complete(close_while_busy())
    loop.run_until_complete(loop.shutdown_default_executor())
    loop.close()
    assert threads() == before + 1
    carry_on.set()  # the batch ends after its loop is gone
    del loop
    # Nothing announces a thread's end: polled, with a bound.
    wait_until(lambda: gc.collect() >= 0 and threads() == before, 10, "the thread let go")
