"""The processes a fault scenario starts, breaks and kills: a store Redis that can be
stopped and restarted (with its data or empty) on the same port, a State API that
can be slowed, broken, refused and garbled, and `celery worker` subprocesses that
can be stopped, frozen and ``kill -9``-ed.

Everything listens on 127.0.0.1 and is started by the scenario itself: the machine's
shared Redis and RabbitMQ are never stopped or reconfigured.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from celery_tenant_gate.testing import EmbeddedRedis, FakeSuperOffice, Reply
from celery_tenant_gate.testing.redis_server import redis_server_binary

ROOT = Path(__file__).resolve().parents[2]
#: Seconds a worker may take to start consuming.
START_TIMEOUT = 60.0


class StoreRedis(EmbeddedRedis):
    """A throw-away redis-server (see EmbeddedRedis) that can go down and come back on
    the same port: with its data (saved on the way down, as a persistent Redis) or
    empty (as a Redis without persistence)."""

    def _args(self) -> list[str]:
        assert self._dir is not None
        return [
            redis_server_binary(),
            *("--port", str(self.port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no", "--dir", self._dir.name),
        ]

    def down(self, *, keep_data: bool) -> None:
        """SHUTDOWN (SAVE to its dump file, or NOSAVE): clients are refused from now."""
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=10)
        with contextlib.suppress(redis.ConnectionError):
            client.shutdown(save=keep_data, nosave=not keep_data)
        client.close()
        assert self._process is not None
        self._process.wait(10)
        self._process = None
        if not keep_data and self._dir is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self._dir.name, "dump.rdb"))

    def up(self) -> None:
        """Start again on the same port (loading its dump file, if one was kept)."""
        self._process = subprocess.Popen(
            self._args(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        if not self._wait_ready():
            raise RuntimeError(f"the store redis-server did not come back on {self.port}")


@dataclass(frozen=True)
class Call:
    """One State API call the fake received: for whom, when, what it answered when."""

    ctx: str
    at: float
    status: int
    answered_at: float


class _TimedSuperOffice(FakeSuperOffice):
    def __init__(self, port: int, calls: list[Call], lock: threading.Lock) -> None:
        super().__init__(port=port)
        self._log, self._log_lock = calls, lock

    def _answer(self, context_id: str) -> tuple[Reply, float]:
        reply, delay = super()._answer(context_id)
        now = time.time()
        with self._log_lock:
            self._log.append(Call(context_id, now, reply.status, now + delay))
        return reply, delay


#: The State API faults: how each is played.
FAULTS = ("delay", "500", "refused", "429", "garbage")
#: Scripted replies are queued this many at a time (the fault lasts until recovered).
_SCRIPTED = 10_000


class StateAPI:
    """The fake State API (FakeSuperOffice) on a port of its own, with faults per
    tenant (``delay``: answers after *delay* s; ``500``; ``429`` with Retry-After;
    ``garbage``: a 200 that is not JSON) or for everyone (``refused``: the server is
    stopped; it comes back on the same port with the same states)."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        self._states: dict[str, str] = {}
        self._fake: FakeSuperOffice | None = _TimedSuperOffice(0, self.calls, self._lock).start()
        self.port = int(self._fake.base_url.rsplit(":", 1)[1])
        self.url = f"http://127.0.0.1:{self.port}/api/state"
        self._faulty: list[str] = []

    @property
    def fake(self) -> FakeSuperOffice:
        if self._fake is None:
            raise RuntimeError("the State API is refusing (stopped)")
        return self._fake

    def set_state(self, ctx: str, state: str) -> None:
        self._states[ctx] = state
        if self._fake is not None:
            self._fake.set_state(ctx, state, valid_for=7200)

    def fault(self, kind: str, ctxs: list[str], delay: float = 30.0) -> None:
        if kind == "refused":
            self.fake.stop()
            self._fake = None
            return
        self._faulty = list(ctxs)
        for ctx in ctxs:
            if kind == "delay":
                self.fake.set_delay(ctx, delay)
            elif kind == "500":
                self.fake.script(ctx, *[Reply(status=500, body=b"{}")] * _SCRIPTED)
            elif kind == "429":
                reply = Reply(status=429, body=b"{}", headers={"Retry-After": "2"})
                self.fake.script(ctx, *[reply] * _SCRIPTED)
            elif kind == "garbage":
                reply = Reply(body=b"<html>Service Unavailable</html>", content_type="text/html")
                self.fake.script(ctx, *[reply] * _SCRIPTED)
            else:
                raise ValueError(f"unknown State API fault {kind!r}")

    def recover(self) -> float:
        """End every fault; returns when (time.time())."""
        if self._fake is None:
            self._fake = _TimedSuperOffice(self.port, self.calls, self._lock).start()
        for ctx in self._faulty:
            self._fake.forget(ctx)  # its script and delay
        self._faulty = []
        for ctx, state in self._states.items():
            self._fake.set_state(ctx, state, valid_for=7200, delay=0.0)
        return time.time()

    def answers(self, ctx: str) -> list[Call]:
        with self._lock:
            return [call for call in self.calls if call.ctx == ctx]

    def stop(self) -> None:
        if self._fake is not None:
            self._fake.stop()
            self._fake = None


class FaultWorker:
    """`celery -A bench.faults.faultapp worker -P prefork -c 2` with *env*, in a
    session of its own (so that ``kill -9`` takes its pool processes too); its log in
    a temporary file. Always stopped by :meth:`stop` (SIGTERM, then SIGKILL)."""

    def __init__(self, env: Mapping[str, str], queue: str, concurrency: int = 2) -> None:
        self.env = dict(env)
        self.queue = queue
        self.concurrency = concurrency
        self.name = f"tgfault-{uuid.uuid4().hex[:8]}@127.0.0.1"
        self.log_path = Path(tempfile.mkstemp(prefix="tgfault-worker-", suffix=".log")[1])
        self.process: subprocess.Popen[bytes] | None = None
        self.pid = 0

    def start(self, ledger: redis.Redis, ready_key: str) -> FaultWorker:
        """Start it and wait until it consumes (its pid on *ready_key*, by BLPOP)."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    *("-m", "celery", "-A", "bench.faults.faultapp", "worker"),
                    *("-P", "prefork", "-c", str(self.concurrency), "-Q", self.queue),
                    *("-n", self.name, "-l", "WARNING"),
                    *("--without-heartbeat", "--without-gossip", "--without-mingle"),
                ],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid = self.process.pid
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            self.check()
            popped: Any = ledger.blpop([ready_key], timeout=1)
            if popped is not None:
                if int(popped[1]) == self.pid:
                    return self
                ledger.rpush(ready_key, popped[1])  # another worker's: put it back
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker not ready in {START_TIMEOUT:.0f}s\n{self.log_tail()}")

    def check(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"the worker exited ({self.process.returncode})\n{self.log_tail()}")

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""

    def log_tail(self, lines: int = 30) -> str:
        return "worker log:\n" + "\n".join(self.log().splitlines()[-lines:])

    def _signal_group(self, sig: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)

    def kill9(self) -> float:
        """SIGKILL to the worker and its pool processes at once; returns when."""
        self._signal_group(signal.SIGKILL)
        at = time.time()
        if self.process is not None:
            self.process.wait(10)
            self.process = None
        return at

    def freeze(self) -> None:
        self._signal_group(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal_group(signal.SIGCONT)

    def terminate(self) -> None:
        """SIGTERM (a warm shutdown), without waiting: :meth:`stop` waits."""
        self.thaw()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGCONT)
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)

    def discard_log(self) -> None:
        with contextlib.suppress(OSError):
            self.log_path.unlink()


def wait_for(
    condition: Callable[[], bool],
    timeout: float,
    what: str,
    check: Callable[[], None] = lambda: None,
    interval: float = 0.01,
) -> float:
    """Poll *condition* (a broker's queue length or a key, which nothing announces) every
    *interval* s for at most *timeout* s; returns when it held (time.time()).
    Raises TimeoutError naming *what*."""
    deadline = time.monotonic() + timeout
    while not condition():
        check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
    return time.time()
