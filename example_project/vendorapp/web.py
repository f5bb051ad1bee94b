"""The vendor's web app: SuperOffice's state-change webhook at ``/superoffice/webhook``.

Register ``https://<your host>/superoffice/webhook`` as the app's State Change URL in
SuperOffice's developer portal. Serve it with any WSGI server::

    gunicorn example_project.vendorapp.web:application

or, for a try, ``python -m example_project.vendorapp.web`` (the standard library's
server, on ``VENDORAPP_WEB_HOST``:``VENDORAPP_WEB_PORT``).

The web process needs the broker and Redis only: it builds a bare Celery app with the
same settings and imports nothing of the worker side (no tasks, no gate).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from celery import Celery

from celery_tenant_gate.web.wsgi import make_wsgi_app
from example_project.vendorapp.settings import Settings

WEBHOOK_PATH = "/superoffice/webhook"

StartResponse = Callable[..., Any]


def make_application(settings: Settings | None = None) -> Callable[..., Iterable[bytes]]:
    """The WSGI application: the webhook, a health check, 404 elsewhere."""
    settings = settings or Settings.from_env()
    celery_app = Celery("vendorapp", set_as_current=False)
    celery_app.conf.update(settings.celery_conf())
    webhook = make_wsgi_app(celery_app)  # the one line that mounts the webhook

    def application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == WEBHOOK_PATH:
            return webhook(environ, start_response)
        if path == "/health":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]

    return application


application = make_application()


def main() -> None:
    settings = Settings.from_env()

    class Handler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            sys.stderr.write("vendorapp web: " + format % args + "\n")

    server = make_server(settings.web_host, settings.web_port, application, handler_class=Handler)
    host, port = server.server_address[:2]
    # One line on stdout, for whoever started us with port 0 (the demo, the tests).
    print(f"vendorapp web: listening on http://{host!s}:{port}{WEBHOOK_PATH}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
