"""The webhook as a Flask blueprint::

from proj.celery import app as celery_app
from celery_tenant_gate.web.flask import webhook_blueprint

flask_app.register_blueprint(webhook_blueprint(celery_app))  # POST /superoffice/webhook
"""

from __future__ import annotations

from typing import Any

try:
    from flask import Blueprint, Response, request
    from werkzeug.exceptions import ClientDisconnected
except ImportError as exc:  # pragma: no cover - depends on the environment
    from . import missing_extra

    raise missing_extra("Flask", "flask") from exc

from . import DEFAULT_PATH, as_receiver, parse_content_length, read_limited

#: Methods routed to the receiver, so that it answers 405 itself, in JSON.
_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


def webhook_blueprint(
    receiver_or_app: Any, *, path: str = DEFAULT_PATH, name: str = "tenant_gate_webhook"
) -> Blueprint:
    """A blueprint answering SuperOffice's notifications at *path* (a receiver or a Celery app)."""
    receiver = as_receiver(receiver_or_app)
    blueprint = Blueprint(name, __name__)

    @blueprint.route(path, methods=_METHODS)
    def webhook() -> Response:
        try:
            length = parse_content_length(request.headers.get("Content-Length"))
        except ValueError:
            length = None  # werkzeug reads no body then; the receiver says it is empty
        body = None
        if request.method == "POST" and (length is None or length <= receiver.max_body):
            # werkzeug's stream ends at Content-Length, or at a chunked body's end
            # (wsgi.input_terminated): never more than the limit is read.
            try:
                body = read_limited(request.stream.read, receiver.max_body + 1)
            except ClientDisconnected:
                body = b""  # shorter than its Content-Length: the client went away
        answer = receiver.handle(request.method, request.headers.get("Content-Type"), body, length)
        return Response(answer.body, status=answer.status, headers=dict(answer.headers))

    return blueprint
