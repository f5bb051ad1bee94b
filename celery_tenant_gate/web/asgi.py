"""The webhook as a plain ASGI 3 application (uvicorn, hypercorn, daphne)::

    # webhook.py            uvicorn webhook:application
    from proj.celery import app
    from celery_tenant_gate.web.asgi import make_asgi_app

    application = make_asgi_app(app)

The body is read chunk by chunk and reading stops past ``max_body``. The receiver's
work (checking the token; Redis and the broker; fetching keys) runs in a thread, off
the event loop, a batch at a time: the requests that come while one batch is with the
receiver wait and go together as the next one (see :class:`WebhookASGIApp`). A
request whose signing key must be fetched first waits for it in a thread of the
loop's default pool, holding up no batch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import weakref
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from . import as_receiver, parse_content_length
from .receiver import KEY_PENDING, WebhookReceiver, WebhookRequest, WebhookResponse

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class WebhookASGIApp:
    """An ASGI 3 application answering SuperOffice's notifications at any path.

    Requests are handed to the receiver in batches (:meth:`WebhookReceiver.handle_many`
    in a thread of its own), one batch at a time per event loop: a
    request that comes while a batch is with the receiver goes with the next one, and
    a request that comes to an idle server goes at once. A busy server so makes one
    thread hand-off and one Redis round trip for many notifications instead of one
    each, and the event loop never waits on Redis, the broker or the JWKS.
    """

    #: Most requests handed to the receiver at once.
    MAX_BATCH = 64

    def __init__(self, receiver: WebhookReceiver) -> None:
        self.receiver = receiver
        self._batches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Batches] = (
            weakref.WeakKeyDictionary()
        )

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
                # A list of its own: middleware may change it, and answers are shared.
                "headers": list(response.raw_headers),
            }
        )
        await send({"type": "http.response.body", "body": response.body})

    async def _respond(self, scope: Scope, receive: Receive) -> WebhookResponse | None:
        content_type = content_length = None
        for raw_name, value in scope.get("headers", ()):
            name = raw_name.lower()  # lower-case already, says ASGI; not every server
            if name == b"content-type":
                content_type = value.decode("latin-1")
            elif name == b"content-length":
                content_length = value.decode("latin-1")
        method = str(scope.get("method", "GET"))
        try:
            length = parse_content_length(content_length)
        except ValueError:
            return WebhookResponse.json(400, {"error": "bad Content-Length header"})
        body = None
        limit = self.receiver.max_body
        if method.upper() == "POST" and (length is None or length <= limit):
            body = await _read_body(receive, limit + 1)
            if body is None:
                return None
        request = WebhookRequest(method, content_type, body, length)
        loop = asyncio.get_running_loop()
        batches = self._batches.get(loop)
        if batches is None:
            batches = self._batches[loop] = _Batches(self.receiver, self.MAX_BATCH)
        return await batches.answer(request)


class _Batches:
    """The requests of one event loop waiting for the receiver, and the batch with it.
    (It keeps no reference to its loop: the loop is the key it is kept under.)"""

    def __init__(self, receiver: WebhookReceiver, most: int) -> None:
        self.receiver = receiver
        self.most = most
        self.waiting: list[tuple[WebhookRequest, asyncio.Future[WebhookResponse]]] = []
        self.busy = False
        #: Where the receiver works: one batch at a time needs one thread. (Not the
        #: loop's default executor: its hand-off wraps each call in two futures.)
        self.thread = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="tenant-gate-webhook"
        )

    async def answer(self, request: WebhookRequest) -> WebhookResponse:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[WebhookResponse] = loop.create_future()
        self.waiting.append((request, future))
        if not self.busy:
            self.busy = True
            # Soon, not now: the requests that came in the same turn of the loop join.
            loop.call_soon(self._next)
        response = await future
        if response is KEY_PENDING:
            # Its signing key is being fetched: it waits for it (bounded) in a thread
            # of the loop's pool, holding up no other request.
            response = await loop.run_in_executor(None, self.receiver.handle, *request)
        return response

    def _next(self) -> None:
        batch, self.waiting = self.waiting[: self.most], self.waiting[self.most :]
        if not batch:
            self.busy = False
            return
        requests = [request for request, _ in batch]
        loop = asyncio.get_running_loop()
        try:
            answered = self.thread.submit(self.receiver.handle_many, requests, wait_for_keys=False)
        except RuntimeError as exc:  # shut down: the interpreter is exiting
            answered = concurrent.futures.Future()
            answered.set_exception(exc)

        def back(done: concurrent.futures.Future[list[WebhookResponse]]) -> None:
            # In the receiver's thread: the rest goes on in the loop's.
            try:
                loop.call_soon_threadsafe(self._done, batch, done)
            except RuntimeError:  # the loop was closed meanwhile: nobody waits now
                self.close()

        answered.add_done_callback(back)

    def close(self) -> None:
        """Let go of what waits and of the thread (its loop is closed)."""
        self.waiting.clear()
        self.thread.shutdown(wait=False)

    def _done(
        self,
        batch: list[tuple[WebhookRequest, asyncio.Future[WebhookResponse]]],
        done: concurrent.futures.Future[list[WebhookResponse]],
    ) -> None:
        error = asyncio.CancelledError() if done.cancelled() else done.exception()
        for n, (_, future) in enumerate(batch):
            if future.done():  # the client went away
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(done.result()[n])
        self._next()


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
