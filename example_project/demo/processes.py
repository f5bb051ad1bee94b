"""The example app's processes, started as a user would start them: a Celery worker
(``celery -A example_project.vendorapp worker``) and the web app
(``python -m example_project.vendorapp.web``), configured by environment variables.

Used by the demo and by the integration tests, so that both run the real thing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path
from types import TracebackType

from example_project.vendorapp.settings import Settings

#: The directory that holds ``example_project``: the processes run there.
ROOT = Path(__file__).resolve().parent.parent.parent


class ProcessFailed(RuntimeError):
    """A process of the example app did not start, or died; the message has its log."""


class Service:
    """One subprocess, its output kept in memory (the last lines), ready when a line
    of its output contains *ready_text*."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], ready_text: str) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.ready_text = ready_text
        self.ready_line = ""
        self.lines: deque[str] = deque(maxlen=400)
        self._ready = threading.Event()
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> Service:
        self.process = subprocess.Popen(
            self.argv,
            cwd=ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            # Its own session: a Ctrl-C in the terminal reaches the demo only, which
            # then stops its processes in order.
            start_new_session=True,
        )
        threading.Thread(target=self._read, name=f"{self.name}-output", daemon=True).start()
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            if not self._ready.is_set() and self.ready_text in line:
                self.ready_line = line.strip()
                self._ready.set()
        self._ready.set()  # it ended: wake whoever waits, wait_ready tells why

    def wait_ready(self, timeout: float = 60.0) -> None:
        if not self._ready.wait(timeout):
            raise ProcessFailed(f"{self.name} did not start in {timeout:.0f} s:\n{self.tail()}")
        if not self.ready_line:
            raise ProcessFailed(f"{self.name} exited while starting:\n{self.tail()}")

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int:
        return self.process.pid if self.process is not None else 0

    def tail(self, count: int = 40) -> str:
        return "\n".join(f"    {self.name}| {line}" for line in list(self.lines)[-count:])

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (a worker finishes its task and stops), then SIGKILL after *timeout*."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def app_env(settings: Settings) -> dict[str, str]:
    """The environment of the app's processes: ours, plus the settings."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("VENDORAPP_")}
    env.update(settings.to_env())
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def worker(settings: Settings, name: str = "worker", pool: str = "solo") -> Service:
    """``celery -A example_project.vendorapp worker`` (not started yet)."""
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "example_project.vendorapp",
        "worker",
        "-P",
        pool,
        "-c",
        "1",
        "-n",
        f"{name}-{settings.namespace}@%h",
        "-l",
        "info",
        "--without-mingle",
        "--without-gossip",
        "--without-heartbeat",
    ]
    return Service(name, argv, app_env(settings), " ready.")


def web(settings: Settings) -> Service:
    """``python -m example_project.vendorapp.web`` (not started yet)."""
    argv = [sys.executable, "-m", "example_project.vendorapp.web"]
    return Service("web", argv, app_env(settings), "listening on ")


def web_url(service: Service) -> str:
    """The webhook's URL, from the line the web app prints when it listens."""
    return service.ready_line.rsplit(" ", 1)[-1]
