"""Real Celery workers for the tests: `celery -A gateapp worker` in a subprocess."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import redis

TESTS = Path(__file__).parent


class Worker:
    def __init__(self, env: dict[str, str], pool: str, concurrency: int, name: str) -> None:
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "gateapp",
                "worker",
                "-P",
                pool,
                "-c",
                str(concurrency),
                "-n",
                f"{name}@%h",
                "-Q",
                f"{env['GATE_PREFIX']}:q.work",
                "-l",
                "info",
                "--without-mingle",
                "--without-gossip",
            ],
            cwd=TESTS,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            if " ready." in line:
                self.ready.set()

    def wait_ready(self, timeout: float = 60) -> None:
        if not self.ready.wait(timeout):
            raise AssertionError("worker did not start:\n" + "".join(self.lines[-40:]))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def kill(self) -> None:
        """kill -9, of the worker and its pool processes."""
        if self.process.poll() is None:
            subprocess.run(["pkill", "-9", "-P", str(self.process.pid)], check=False)
            self.process.kill()
            self.process.wait(10)

    @property
    def log(self) -> str:
        return "".join(self.lines)


class Harness:
    """Starts workers for one test and reads what their task bodies did."""

    def __init__(self, env: dict[str, str], redis_url: str) -> None:
        self.env = env
        self.prefix = env["GATE_PREFIX"]
        self.client = redis.Redis.from_url(redis_url)
        self.workers: list[Worker] = []
        self.seen: list[dict[str, Any]] = []

    def worker(self, pool: str = "solo", concurrency: int = 1, **env: str) -> Worker:
        worker = Worker(
            {**self.env, **env}, pool, concurrency, f"w{len(self.workers)}-{self.prefix[-6:]}"
        )
        self.workers.append(worker)
        worker.wait_ready()
        return worker

    def wait_ran(self, count: int, timeout: float = 60) -> list[dict[str, Any]]:
        """Block until *count* bodies in all have run (BLPOP on their list)."""
        deadline = time.monotonic() + timeout
        while len(self.seen) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                logs = "\n".join(w.log[-3000:] for w in self.workers)
                raise AssertionError(f"{len(self.seen)} of {count} bodies ran:\n{logs}")
            item = self.client.blpop([f"{self.prefix}:ran"], timeout=min(remaining, 1.0))
            if item is not None:
                self.seen.append(json.loads(item[1]))
        return self.seen

    def wait_ids(self, ids: set[str], timeout: float = 90) -> list[dict[str, Any]]:
        """Block until every task id in *ids* has run at least once."""
        deadline = time.monotonic() + timeout
        while not ids <= {r.get("id") for r in self.seen}:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = ids - {r.get("id") for r in self.seen}
                logs = "\n".join(w.log[-3000:] for w in self.workers)
                raise AssertionError(f"{len(missing)} task(s) never ran:\n{logs}")
            item = self.client.blpop([f"{self.prefix}:ran"], timeout=min(remaining, 1.0))
            if item is not None:
                self.seen.append(json.loads(item[1]))
        return self.seen

    def ran_now(self) -> list[dict[str, Any]]:
        """Everything run so far, without waiting."""
        while (item := self.client.lpop(f"{self.prefix}:ran")) is not None:
            self.seen.append(json.loads(item))
        return self.seen

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()


def worker_env(broker: str, redis_url: str, prefix: str, superoffice: Any) -> dict[str, str]:
    """The environment `gateapp` reads, for a test's workers and its own app."""
    return {
        **os.environ,
        "GATE_BROKER": broker,
        "GATE_REDIS": redis_url,
        "GATE_PREFIX": prefix,
        "GATE_STATE_API": superoffice.state_api_url,
        "GATE_MIN_TTL": "0.3",
        "GATE_SWEEP": "0.2",
    }


class DeliveryLog:
    """Which task ids kombu's Redis transport recorded as delivered (``HSET unacked``).

    kombu's Redis transport pops a message with ``BRPOP`` and only then records it in
    its ``unacked`` hash: a consumer killed in between loses that one message, with or
    without the gate. Redis ``MONITOR`` shows every command the server ran, so after a
    kill a missing task can be told apart: lost in that transport window (its id was
    never recorded) or lost after delivery (which would be the gate's fault).
    """

    _ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

    def __init__(self, redis_url: str) -> None:
        self.delivered: set[str] = set()
        self._client = redis.Redis.from_url(redis_url)
        self._monitor = self._client.monitor().__enter__()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            command = str(self._monitor.next_command().get("command", ""))
            if command.upper().startswith("HSET UNACKED "):
                self.delivered.update(self._ID.findall(command))

    def close(self) -> set[str]:
        """Stop reading (after one last command, sent here) and return what was seen."""
        self._stop.set()
        self._client.ping()
        self._thread.join(timeout=10)
        self._monitor.__exit__(None, None, None)
        self._client.close()
        return self.delivered


def wait_until(condition: Any, timeout: float = 30, what: str = "condition") -> None:
    """Poll *condition* (a broker queue length, which nothing announces) with a bound."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
