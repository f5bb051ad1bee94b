"""The web side of bench/webhook.py: uvicorn, pinned to one core, serving the real
ASGI adapter of the webhook at ``/hook`` and a plain 202 at ``/plain`` (the baseline:
the body is read, nothing is checked, nothing queued).

Arguments: port file, core, Redis URL (also the broker), key prefix, JWKS URL, issuer,
key cache: ``own`` (the package's :class:`SigningKeys`: fetched in the background) or
``pyjwkclient`` (PyJWT's ``PyJWKClient``, which fetches on the request's thread under
its lock when its cache expires or a kid is unknown), to compare the two.
The port is written to the port file once the socket listens. HTTP/1.1 keep-alive,
no access log; uvicorn takes its C parser (httptools) and uvloop when installed.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

import jwt
import uvicorn
from celery import Celery

from celery_tenant_gate.web.asgi import make_asgi_app
from celery_tenant_gate.web.factory import receiver_for

PLAIN_BODY = b'{"status":"accepted"}'
PLAIN_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(PLAIN_BODY)).encode()),
]


def router(webhook: Any) -> Any:
    async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/plain":
            await webhook(scope, receive, send)
            return
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 202, "headers": PLAIN_HEADERS})
        await send({"type": "http.response.body", "body": PLAIN_BODY})

    return application


class PyJWKClientKeys:
    """PyJWT's own JWKS client as the verifier's key source."""

    def __init__(self, url: str) -> None:
        self.client = jwt.PyJWKClient(url, lifespan=300, cooldown_duration=10, timeout=10)

    def get(self, kid: str | None, *, wait: bool = True) -> jwt.PyJWK:
        if kid is None:
            raise jwt.PyJWKClientError("no kid")
        return self.client.get_signing_key(kid)


def main() -> None:
    port_file, core, redis_url, prefix, jwks_url, issuer, cache = sys.argv[1:8]
    os.sched_setaffinity(0, {int(core)})
    app = Celery("bench-webhook", broker=redis_url, set_as_current=False)
    app.conf.update(
        tenant_gate_redis_url=redis_url,
        tenant_gate_key_prefix=prefix,
        tenant_gate_control_queue=f"{prefix}:control",
        tenant_gate_webhook_jwks_url=jwks_url,
        tenant_gate_webhook_issuer=issuer,
        tenant_gate_webhook_jwks_allow_http=True,  # the fake SuperOffice is http
    )
    receiver = receiver_for(app)
    if cache == "pyjwkclient":
        receiver.verifier.keys = PyJWKClientKeys(jwks_url)
    config = uvicorn.Config(
        router(make_asgi_app(receiver)),
        lifespan="off",
        access_log=False,
        log_level="warning",
        backlog=256,
    )
    server = uvicorn.Server(config)
    # proto given: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # without it every keep-alive answer after the first waits for a delayed ACK (40 ms).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(256)
    with open(port_file + ".tmp", "w") as out:
        out.write(str(sock.getsockname()[1]))
    os.replace(port_file + ".tmp", port_file)
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
