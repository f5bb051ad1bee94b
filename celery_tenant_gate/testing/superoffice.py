"""A local stand-in for SuperOffice's State API, over real HTTP on 127.0.0.1.

It answers per tenant with any state, delay, error status or garbage, and counts
the calls it got::

    with FakeSuperOffice() as so:
        so.set_state("Cust1", "Running", valid_for=60)
        so.script("Cust2", Reply(status=503, headers={"Retry-After": "1"}))
        app.conf.tenant_gate_state_api_url = so.state_api_url
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

STATE_PATH = "/api/state/"


@dataclass(frozen=True)
class Reply:
    """One scripted answer. ``body=None`` sends the tenant's state document."""

    status: int = 200
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    content_type: str = "application/json"


@dataclass
class _Tenant:
    document: dict[str, Any] | None = None
    delay: float = 0.0
    script: deque[Reply] = field(default_factory=deque)


def dotnet_timestamp(when: datetime) -> str:
    """A timestamp as .NET writes it: 7 fraction digits and a ``Z``."""
    when = when.astimezone(timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond:06d}0Z"


class FakeSuperOffice:
    """A threaded HTTP server playing SuperOffice. Thread-safe; use as a context manager."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._lock = threading.Lock()
        self._tenants: dict[str, _Tenant] = {}
        self._calls: Counter[str] = Counter()
        self._server = _QuietServer((host, port), _handler(self))
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def state_api_url(self) -> str:
        """What to put in ``tenant_gate_state_api_url``."""
        return self.base_url + STATE_PATH.rstrip("/")

    def start(self) -> FakeSuperOffice:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-superoffice",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> FakeSuperOffice:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what it answers ----------------------------------------------------------

    def set_state(
        self,
        context_id: str,
        state: str | int = "Running",
        *,
        valid_for: float = 60.0,
        is_running: bool | None = None,
        endpoint: str | None = None,
        delay: float | None = None,
        **extra: Any,
    ) -> None:
        """Answer *state* for the tenant from now on (``ValidUntil`` = now + *valid_for*)."""
        if is_running is None:
            is_running = state in ("Running", "OnlineMaintenance", 2, 5)
        server = endpoint or f"https://online{len(context_id) % 9 + 1}.superoffice.com"
        document: dict[str, Any] = {
            "ContextIdentifier": context_id,
            "Endpoint": f"{server}/{context_id}",
            "State": state,
            "IsRunning": is_running,
            "ValidUntil": dotnet_timestamp(
                datetime.now(timezone.utc) + timedelta(seconds=valid_for)
            ),
            "Api": f"{server}/{context_id}/api",
        }
        document.update(extra)
        with self._lock:
            tenant = self._tenants.setdefault(context_id, _Tenant())
            tenant.document = document
            if delay is not None:
                tenant.delay = delay

    def set_document(self, context_id: str, document: Any) -> None:
        """Answer exactly this JSON value for the tenant from now on."""
        with self._lock:
            self._tenants.setdefault(context_id, _Tenant()).document = document

    def set_delay(self, context_id: str, delay: float) -> None:
        with self._lock:
            self._tenants.setdefault(context_id, _Tenant()).delay = delay

    def script(self, context_id: str, *replies: Reply) -> None:
        """Answer these replies to the next calls, in order, then the state again."""
        with self._lock:
            self._tenants.setdefault(context_id, _Tenant()).script.extend(replies)

    def forget(self, context_id: str) -> None:
        """Answer 404 for the tenant from now on."""
        with self._lock:
            self._tenants.pop(context_id, None)

    def calls(self, context_id: str | None = None) -> int:
        """State API calls received (for one tenant, or in all)."""
        with self._lock:
            if context_id is None:
                return sum(self._calls.values())
            return self._calls[context_id]

    def reset_calls(self) -> None:
        with self._lock:
            self._calls.clear()

    def _answer(self, context_id: str) -> tuple[Reply, float]:
        with self._lock:
            self._calls[context_id] += 1
            tenant = self._tenants.get(context_id)
            if tenant is None:
                return Reply(status=404, body=b'{"Message":"Not found"}'), 0.0
            if tenant.script:
                reply = tenant.script.popleft()
                if reply.body is None and reply.status == 200:
                    reply = Reply(
                        200,
                        json.dumps(tenant.document).encode(),
                        reply.headers,
                        reply.delay,
                        reply.content_type,
                    )
                return reply, reply.delay or tenant.delay
            return Reply(body=json.dumps(tenant.document).encode()), tenant.delay


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up early (a timeout, a refused oversized body) is
        # part of what the tests do, not a failure of the stand-in.
        pass


def _handler(fake: FakeSuperOffice) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if not path.startswith(STATE_PATH):
                self._send(Reply(status=404, body=b"{}"))
                return
            reply, delay = fake._answer(unquote(path[len(STATE_PATH) :]))
            if delay:
                time.sleep(delay)  # the stand-in for a slow server
            self._send(reply)

        def _send(self, reply: Reply) -> None:
            body = reply.body or b""
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: tests read counts, not logs

    return Handler
