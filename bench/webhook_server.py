"""The web side for bench/webhook.py: a WSGI server on one core, answering the webhook
(any path) and a plain 202 (path /plain, the baseline). Arguments: port file, Redis
URL, key prefix, JWKS URL, issuer."""

from __future__ import annotations

import os
import sys
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from celery import Celery

from celery_tenant_gate.web.wsgi import make_wsgi_app


class Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def main() -> None:
    port_file, redis_url, prefix, jwks_url, issuer = sys.argv[1:6]
    os.sched_setaffinity(0, {0})
    app = Celery("bench-webhook", broker=redis_url, set_as_current=False)
    app.conf.update(
        tenant_gate_redis_url=redis_url,
        tenant_gate_key_prefix=prefix,
        tenant_gate_control_queue=f"{prefix}:control",
        tenant_gate_webhook_jwks_url=jwks_url,
        tenant_gate_webhook_issuer=issuer,
    )
    webhook = make_wsgi_app(app)

    def application(environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") == "/plain":
            environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            start_response("202 Accepted", [("Content-Type", "application/json")])
            return [b'{"status": "accepted"}']
        return webhook(environ, start_response)

    server = make_server("127.0.0.1", 0, application, handler_class=Quiet)
    with open(port_file, "w") as out:
        out.write(str(server.server_port))
    server.serve_forever()


if __name__ == "__main__":
    main()
