"""What the local stand-ins (:class:`~.superoffice.FakeSuperOffice`,
:class:`~.tenant_api.FakeTenantApi`) share: a threaded HTTP server on loopback, run
in a daemon thread, started and stopped (or used as a context manager)."""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer
from types import TracebackType
from typing import Any, TypeVar

S = TypeVar("S", bound="Serving")


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up early is not a failure of the stand-in


class Serving:
    """Runs ``self._server`` (set by the subclass) in a thread named *thread_name*."""

    _server: QuietServer
    _thread: threading.Thread | None = None
    thread_name = "fake-server"

    def start(self: S) -> S:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=self.thread_name,
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self: S) -> S:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
