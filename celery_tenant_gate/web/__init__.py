"""Web adapters for the webhook: one line in your web app, whatever it is built with.

=================  ==============================================================
plain WSGI         ``application = make_wsgi_app(celery_app)`` (``web.wsgi``)
plain ASGI         ``application = make_asgi_app(celery_app)`` (``web.asgi``)
Django             ``path("superoffice/webhook", webhook_view(celery_app))`` (``web.django``)
Flask              ``flask_app.register_blueprint(webhook_blueprint(celery_app))`` (``web.flask``)
FastAPI            ``api.include_router(webhook_router(celery_app))`` (``web.starlette``)
Starlette          ``Starlette(routes=[webhook_route(celery_app)])`` (``web.starlette``)
=================  ==============================================================

Each takes a Celery app (its settings say how to check tokens, where Redis is and
which queue the control task goes to) or a ready :class:`WebhookReceiver`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .receiver import WebhookReceiver

#: Where the blueprint and routers answer unless told otherwise.
DEFAULT_PATH = "/superoffice/webhook"


def as_receiver(receiver_or_app: Any) -> WebhookReceiver:
    """*receiver_or_app* if it is a :class:`WebhookReceiver`, else the Celery app's one."""
    if isinstance(receiver_or_app, WebhookReceiver):
        return receiver_or_app
    from .factory import receiver_for  # noqa: PLC0415 - only when given an app

    return receiver_for(receiver_or_app)


def missing_extra(framework: str, extra: str) -> ImportError:
    """The error to raise when an optional framework is not installed."""
    return ImportError(
        f"the {framework} adapter of celery-tenant-gate needs {framework}: "
        f"pip install 'celery-tenant-gate[{extra}]'"
    )


def parse_content_length(value: str | None) -> int | None:
    """The Content-Length header as a number; ``None`` if absent, ``ValueError`` if bad."""
    if value is None or value.strip() == "":
        return None
    text = value.strip()
    if not text.isdigit() or not text.isascii():
        raise ValueError(f"bad Content-Length {value!r}")
    return int(text)


def read_limited(read: Callable[[int], bytes], limit: int) -> bytes:
    """Read until end of stream or *limit* bytes, whichever comes first."""
    chunks = bytearray()
    while len(chunks) < limit:
        chunk = read(limit - len(chunks))
        if not chunk:
            break
        chunks += chunk
    return bytes(chunks)


def read_wsgi_body(environ: Mapping[str, Any], length: int | None, limit: int) -> bytes:
    """The body of a WSGI request: *length* bytes (fewer if the client went away), or
    with no length, a chunked body the server ends for us (``wsgi.input_terminated``)
    up to *limit* + 1 bytes; else none (PEP 3333: no Content-Length, no body to read)."""
    if length is not None:
        return read_limited(environ["wsgi.input"].read, length)
    if environ.get("wsgi.input_terminated"):
        return read_limited(environ["wsgi.input"].read, limit + 1)
    return b""
