"""A local stand-in for a SuperOffice server's tenant API (``{Endpoint}/api``), over
real HTTP on 127.0.0.1. It counts what it gets per tenant, answers any scripted
status (421, 429, 503...), lists contacts page by page, and runs a test's action
(pause, move, delete the tenant) at the N-th request::

    with FakeSuperOffice() as so, FakeTenantApi() as host:
        so.set_state("Cust1", "Running", endpoint=host.base_url)   # Api: {base_url}/Cust1/api
        host.script("Cust1", Reply(status=429, headers={"Retry-After": "5"}))
        host.at("Cust1", 40, lambda: so.set_state("Cust1", "OfflineMaintenance"))
        host.misdirect("Cust1")        # from now on: 421 Misdirected Request
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .serving import QuietServer, Serving
from .superoffice import Reply

#: The page size of the contact list when the request gives no ``$top``.
PAGE = 50


@dataclass(frozen=True)
class Seen:
    """One request the host got."""

    at: float
    method: str
    #: The path after ``/{ctx}/api/``, with its query.
    path: str
    status: int


class FakeTenantApi(Serving):
    """One SuperOffice server: serves ``/{ctx}/api/...`` for any tenant."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = QuietServer((host, port), _handler(self))
        self.thread_name = "fake-tenant-api"
        self._lock = threading.Lock()
        self._count: Counter[str] = Counter()
        self._seen: defaultdict[str, list[Seen]] = defaultdict(list)
        self._script: defaultdict[str, deque[Reply]] = defaultdict(deque)
        self._actions: dict[tuple[str, int], Callable[[], None]] = {}
        self._misdirected: set[str] = set()
        self._contacts: dict[str, int] = {}

    @property
    def base_url(self) -> str:
        """The server, as a tenant's ``Endpoint`` starts (without the tenant)."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def api(self, context_id: str) -> str:
        """The tenant's ``Api`` on this server."""
        return f"{self.base_url}/{context_id}/api"

    # -- what it answers ------------------------------------------------------------

    def script(self, context_id: str, *replies: Reply) -> None:
        """Answer these to the tenant's next requests, in order (``body=None``: the
        usual answer, with the reply's status and headers)."""
        with self._lock:
            self._script[context_id].extend(replies)

    def at(self, context_id: str, n: int, action: Callable[[], None]) -> None:
        """Run *action* when the tenant's *n*-th request has come, before answering
        it: the client hears nothing after that request before the action is done."""
        with self._lock:
            self._actions[(context_id, n)] = action

    def misdirect(self, context_id: str, misdirected: bool = True) -> None:
        """The tenant is not (or again is) on this server: 421 Misdirected Request."""
        with self._lock:
            if misdirected:
                self._misdirected.add(context_id)
            else:
                self._misdirected.discard(context_id)

    def set_contacts(self, context_id: str, count: int) -> None:
        """``GET v1/Contact`` lists this many contacts, ``$top`` at a time."""
        with self._lock:
            self._contacts[context_id] = count

    # -- what it got ------------------------------------------------------------------

    def requests(self, context_id: str | None = None) -> int:
        """Requests received (for one tenant, or in all)."""
        with self._lock:
            if context_id is None:
                return sum(self._count.values())
            return self._count[context_id]

    def seen(self, context_id: str) -> list[Seen]:
        with self._lock:
            return list(self._seen[context_id])

    # -- running ----------------------------------------------------------------------

    def _answer(self, method: str, raw_path: str) -> Reply:
        parts = raw_path.split("/", 3)  # "", ctx, "api", rest
        if len(parts) < 3 or parts[2] != "api":
            return Reply(status=404, body=b'{"Error": "not a tenant API path"}')
        ctx, rest = unquote(parts[1]), parts[3] if len(parts) > 3 else ""
        with self._lock:
            self._count[ctx] += 1
            n = self._count[ctx]
            action = self._actions.pop((ctx, n), None)
        if action is not None:
            action()
        with self._lock:
            if ctx in self._misdirected:
                reply = Reply(status=421, body=b'{"Error": "Misdirected Request"}')
            elif self._script[ctx]:
                reply = self._script[ctx].popleft()
            else:
                reply = Reply()
            if reply.body is None:
                reply = Reply(reply.status, self._body(ctx, n, rest), reply.headers)
            self._seen[ctx].append(Seen(time.time(), method, rest, reply.status))
        return reply

    def _body(self, ctx: str, n: int, rest: str) -> bytes:
        split = urlsplit(rest)
        if split.path.rstrip("/").lower() != "v1/contact" or ctx not in self._contacts:
            return json.dumps({"n": n, "path": split.path}).encode()
        query = parse_qs(split.query)
        skip = int(query.get("$skip", ["0"])[0])
        top = int(query.get("$top", [str(PAGE)])[0])
        total = self._contacts[ctx]
        page: dict[str, Any] = {
            "value": [{"ContactId": i + 1} for i in range(skip, min(skip + top, total))]
        }
        if skip + top < total:
            page["odata.nextLink"] = f"{self.api(ctx)}/v1/Contact?$skip={skip + top}&$top={top}"
        return json.dumps(page).encode()


def _handler(fake: FakeTenantApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes: without this, Nagle's algorithm and
        # the client's delayed ACK add 40 ms to every answer on a kept-alive connection.
        disable_nagle_algorithm = True

        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            reply = fake._answer(self.command, self.path)
            body = reply.body or b""
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _any  # noqa: N815 (http.server names)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
