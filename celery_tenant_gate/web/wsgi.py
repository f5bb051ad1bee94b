"""The webhook as a plain WSGI application (gunicorn, uWSGI, mod_wsgi, waitress...)::

    # webhook.py            gunicorn webhook:application
    from proj.celery import app
    from celery_tenant_gate.web.wsgi import make_wsgi_app

    application = make_wsgi_app(app)

It answers every path it is mounted at; at most ``max_body + 1`` bytes are read. A
chunked body is read when the server decodes it and says so (``wsgi.input_terminated``:
gunicorn, werkzeug, uWSGI with ``--http-chunked-input``...).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from . import as_receiver, parse_content_length, read_wsgi_body
from .receiver import WebhookReceiver, WebhookResponse

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def make_wsgi_app(receiver_or_app: Any) -> WSGIApp:
    """A WSGI application answering SuperOffice's notifications (a receiver or a Celery app)."""
    receiver = as_receiver(receiver_or_app)

    def application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        response = _respond(receiver, environ)
        status = f"{response.status} {HTTPStatus(response.status).phrase}"
        start_response(status, list(response.headers.items()))
        return [response.body]

    return application


def _respond(receiver: WebhookReceiver, environ: dict[str, Any]) -> WebhookResponse:
    method = str(environ.get("REQUEST_METHOD", "GET"))
    try:
        length = parse_content_length(environ.get("CONTENT_LENGTH"))
    except ValueError:
        return WebhookResponse.json(400, {"error": "bad Content-Length header"})
    body = None
    if method.upper() == "POST" and (length is None or length <= receiver.max_body):
        body = read_wsgi_body(environ, length, receiver.max_body)
    return receiver.handle(method, environ.get("CONTENT_TYPE"), body, length)
