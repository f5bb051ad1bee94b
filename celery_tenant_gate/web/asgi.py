"""The webhook as a plain ASGI 3 application (uvicorn, hypercorn, daphne)::

    # webhook.py            uvicorn webhook:application
    from proj.celery import app
    from celery_tenant_gate.web.asgi import make_asgi_app

    application = make_asgi_app(app)

The body is read chunk by chunk and reading stops past ``max_body``. The receiver's
blocking work (Redis, the broker, fetching keys) runs in a thread, off the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from celery_tenant_gate.webhook import WebhookReceiver, WebhookResponse

from . import as_receiver, parse_content_length

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class WebhookASGIApp:
    """An ASGI 3 application answering SuperOffice's notifications at any path."""

    def __init__(self, receiver: WebhookReceiver) -> None:
        self.receiver = receiver

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            raise RuntimeError(f"the webhook answers HTTP only, not {scope['type']!r}")
        response = await self._respond(scope, receive)
        if response is None:
            return  # the client went away
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [
                    (name.lower().encode("latin-1"), value.encode("latin-1"))
                    for name, value in response.headers.items()
                ],
            }
        )
        await send({"type": "http.response.body", "body": response.body})

    async def _respond(self, scope: Scope, receive: Receive) -> WebhookResponse | None:
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in scope.get("headers", [])
        }
        method = str(scope.get("method", "GET"))
        try:
            length = parse_content_length(headers.get("content-length"))
        except ValueError:
            return WebhookResponse.json(400, {"error": "bad Content-Length header"})
        body = None
        limit = self.receiver.max_body
        if method.upper() == "POST" and (length is None or length <= limit):
            body = await _read_body(receive, limit + 1)
            if body is None:
                return None
        return await asyncio.to_thread(
            self.receiver.handle, method, headers.get("content-type"), body, length
        )


def make_asgi_app(receiver_or_app: Any) -> WebhookASGIApp:
    """An ASGI application answering SuperOffice's notifications (a receiver or a Celery app)."""
    return WebhookASGIApp(as_receiver(receiver_or_app))


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < limit:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks += message.get("body", b"")
        if not message.get("more_body", False):
            break
    return bytes(chunks)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
