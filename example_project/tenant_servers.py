"""A local stand-in for the tenants' SuperOffice servers (``https://onlineN.superoffice.com/{ctx}/api``).

The app calls ``{via}/{host}/{ctx}/api/...`` when ``VENDORAPP_TENANT_API_VIA`` is set to
this server's URL. It answers a few contacts and sales for any tenant, and, like
SuperOffice, 421 Misdirected Request on a server the tenant has moved away from
(:meth:`TenantServers.move`). It counts the calls per server and tenant.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

CONTACTS = [{"ContactId": n, "Name": f"Customer {n} AS"} for n in range(1, 4)]
SALES = [{"SaleId": n, "Amount": 1000 * n} for n in range(1, 3)]


class TenantServers:
    """A threaded HTTP server on 127.0.0.1; use as a context manager."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._home: dict[str, str] = {}
        self._calls: Counter[tuple[str, str]] = Counter()
        self._misdirected: Counter[tuple[str, str]] = Counter()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="tenant-servers",
            daemon=True,
        )

    @property
    def url(self) -> str:
        """What to put in ``VENDORAPP_TENANT_API_VIA``."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def move(self, context_id: str, host: str) -> None:
        """From now on the tenant lives on *host*; other servers answer 421 for it."""
        with self._lock:
            self._home[context_id] = host

    def calls(self, host: str | None = None, context_id: str | None = None) -> int:
        """Calls answered 200 (for one server and/or tenant, or in all)."""
        with self._lock:
            return _count(self._calls, host, context_id)

    def misdirected(self, host: str | None = None, context_id: str | None = None) -> int:
        """Calls answered 421."""
        with self._lock:
            return _count(self._misdirected, host, context_id)

    def _answer(self, host: str, ctx: str, resource: str) -> tuple[int, Any]:
        with self._lock:
            home = self._home.get(ctx)
            if home is not None and home != host:
                self._misdirected[(host, ctx)] += 1
                return 421, {"Error": f"{ctx} is not on {host}"}
            self._calls[(host, ctx)] += 1
        if resource == "Contact":
            return 200, {"value": CONTACTS}
        if resource == "Sale":
            return 200, {"value": SALES}
        return 404, {"Error": f"no {resource}"}

    def start(self) -> TenantServers:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> TenantServers:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _count(counter: Counter[tuple[str, str]], host: str | None, ctx: str | None) -> int:
    return sum(
        n
        for (h, c), n in counter.items()
        if (host is None or h == host) and (ctx is None or c == ctx)
    )


def _handler(servers: TenantServers) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            # /{host}/{ctx}/api/v1/{resource}
            parts = self.path.split("?", 1)[0].strip("/").split("/")
            if len(parts) == 5 and parts[2:4] == ["api", "v1"]:
                status, document = servers._answer(parts[0], parts[1], parts[4])
            else:
                status, document = 404, {"Error": "unknown path"}
            body = json.dumps(document).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
