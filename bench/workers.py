"""What the worker benchmarks share: a run's namespace, a `celery worker` subprocess,
timed drains, pre-learnt tenants and clean-up on both brokers.

Everything a run creates is named after its prefix (``tgbench:<uuid8>``): Redis keys,
the work queue and its exchange, the tenant queues. Clean-up deletes exactly those.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import redis
from kombu import Connection

from bench import benchapp
from celery_tenant_gate import install
from celery_tenant_gate.gate.gate import Gate
from celery_tenant_gate.model.record import Source
from celery_tenant_gate.model.states import State, TenantState

ROOT = Path(__file__).resolve().parent.parent
AMQP_URL = os.environ.get("TGBENCH_AMQP", "amqp://guest:guest@127.0.0.1:5672//")
#: Seconds a worker may take to start and take its first task.
START_TIMEOUT = 60.0
#: A pause between two task bodies this long (seconds) is reported as a stall.
STALL = 0.5


def shown(url: str) -> str:
    """*url* without its password, for printing."""
    return str(Connection(url).as_uri())


def new_prefix() -> str:
    return f"tgbench:{uuid.uuid4().hex[:8]}"


def amqp_reachable(url: str = AMQP_URL) -> str | None:
    """None if RabbitMQ answers at *url*, else why not."""
    try:
        with Connection(url, connect_timeout=2) as conn:
            conn.ensure_connection(max_retries=1, timeout=3)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


@dataclass
class Namespace:
    """One benchmark world: an app (this process's twin of the worker's), its gate,
    and the names of everything it creates."""

    broker: str
    redis_url: str
    state_api: str
    prefix: str = field(default_factory=new_prefix)
    #: Whether the workers answer broadcasts (``cancel_consumer``, ...).
    remote_control: bool = False

    def __post_init__(self) -> None:
        self.app = benchapp.create_app(
            self.broker, self.redis_url, self.prefix, self.state_api, self.remote_control
        )
        self.gate: Gate = install(self.app)
        self.gated, self.plain, self.block = benchapp.tasks(self.app)
        self.redis = redis.Redis.from_url(self.redis_url)
        self.work_queue = f"{self.prefix}.work"
        #: Queues on the broker besides the work queue (the gate's control queue).
        self.other_queues = [f"{self.prefix}.control"]
        self._rounds = 0
        #: Gaps longer than STALL seconds between two bodies in a timed round.
        self.stalls: list[float] = []

    @property
    def is_amqp(self) -> bool:
        return self.broker.startswith(("amqp", "pyamqp"))

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "TGBENCH_BROKER": self.broker,
            "TGBENCH_REDIS": self.redis_url,
            "TGBENCH_PREFIX": self.prefix,
            "TGBENCH_STATE_API": self.state_api,
            "TGBENCH_PARENT": str(os.getpid()),
            "TGBENCH_REMOTE_CONTROL": "1" if self.remote_control else "0",
        }

    # -- tenants ------------------------------------------------------------------

    def learn_running(self, tenants: Iterable[str]) -> None:
        """Store every tenant as Running for two hours: no State API call is needed."""
        until = datetime.now(timezone.utc) + timedelta(hours=2)
        learn = self.gate.states.learn
        for ctx in tenants:
            learn(
                TenantState(
                    ctx,
                    State.RUNNING,
                    "Running",
                    True,
                    valid_until=until,
                    endpoint=f"https://online.example.invalid/{ctx}",
                    api=f"https://online.example.invalid/{ctx}/api",
                ),
                source=Source.MANUAL,
            )

    # -- publishing and timing ------------------------------------------------------

    def publish(self, task: Any, tenants: list[str], count: int, into: str, start: int = 0) -> None:
        """*count* messages of *task*, tenants taken round-robin from *start*, on one
        producer (in kombu publish batches where the transport has them: Redis)."""
        n = len(tenants)
        with self.app.producer_or_acquire() as producer, producer.batch(max_size=1000):
            for i in range(start, start + count):
                task.apply_async((tenants[i % n], into), producer=producer)

    def timed_drain(
        self,
        worker: Worker,
        publish: Callable[[str], None],
        count: int,
        timeout: float,
    ) -> float:
        """Block the worker, publish a batch with *publish(into)*, let the worker go;
        return tasks a second from the first body that ran to the last."""
        self._rounds += 1
        go = f"{self.prefix}:go:{self._rounds}"
        into = f"{self.prefix}:done:{self._rounds}"
        self.block.apply_async((go,))
        worker.wait_for_key(self.redis, f"{go}:in", START_TIMEOUT)
        publish(into)
        self.redis.set(go, "1")
        deadline = time.monotonic() + timeout
        while (done := self.redis.llen(into)) < count:
            worker.check()
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{done} of {count} tasks ran in {timeout:.0f}s\n{worker.log_tail()}"
                )
            time.sleep(0.05)
        stamps = [float(x) for x in self.redis.lrange(into, 0, -1)]
        self.redis.delete(into, go, f"{go}:in")
        if len(stamps) != count:
            raise RuntimeError(f"{len(stamps)} tasks ran, {count} were sent")
        stamps.sort()
        gap = max((b - a for a, b in itertools.pairwise(stamps)), default=0.0)
        if gap > STALL:
            self.stalls.append(gap)
        return (count - 1) / (stamps[-1] - stamps[0])

    # -- clean-up -------------------------------------------------------------------

    def cleanup(self, extra_queues: Iterable[str] = ()) -> None:
        """Delete every Redis key and broker queue/exchange of this namespace."""
        try:
            if self.is_amqp:
                queues = [self.work_queue, *self.other_queues, *extra_queues]
                delete_amqp(self.broker, queues, [self.work_queue, *self.other_queues])
        finally:
            delete_redis_keys(self.redis, self.prefix)
            self.gate.states.close()
            self.redis.close()
            self.app.close()


def delete_redis_keys(client: redis.Redis, prefix: str) -> int:
    """Delete the keys of *prefix*, kombu's binding tables of its exchanges, and its
    queues' members of shared binding tables (the default exchange's)."""
    deleted = 0
    for pattern in (f"{prefix}*", f"_kombu.binding*{prefix}*"):
        batch: list[Any] = []
        for key in client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += client.delete(*batch)
                batch = []
        if batch:
            deleted += client.delete(*batch)
    for table in client.scan_iter(match="_kombu.binding*", count=1000):
        if client.type(table) != b"set":
            continue
        members = list(client.sscan_iter(table, match=f"*{prefix}*", count=1000))
        for i in range(0, len(members), 500):
            deleted += client.srem(table, *members[i : i + 500])
    return deleted


def delete_amqp(url: str, queues: Iterable[str], exchanges: Iterable[str]) -> None:
    """Delete *queues* and *exchanges* on RabbitMQ (missing ones are fine)."""
    with Connection(url, connect_timeout=5) as conn:
        conn.ensure_connection(max_retries=3)
        channel: Any = conn.channel()
        try:
            for name in queues:
                channel.queue_delete(name)
            for name in exchanges:
                channel.exchange_delete(name)
        finally:
            with contextlib.suppress(Exception):
                channel.close()


def amqp_ready_count(url: str, queue: str) -> int:
    """Messages ready in *queue* on RabbitMQ (0 if it does not exist)."""
    with Connection(url, connect_timeout=5) as conn:
        conn.ensure_connection(max_retries=3)
        channel: Any = conn.channel()
        try:
            _, ready, _ = channel.queue_declare(queue, passive=True)
        except conn.channel_errors:
            return 0
        with contextlib.suppress(Exception):
            channel.close()
        return int(ready)


class Worker:
    """`celery -A bench.benchapp worker -P solo -Q <queue>` for a namespace; always killed."""

    def __init__(self, ns: Namespace, queue: str | None = None) -> None:
        self.ns = ns
        self.queue = queue or ns.work_queue
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in stop()
            prefix="tgbench-worker-", suffix=".log", delete=False
        )
        self.process: subprocess.Popen[bytes] | None = None
        #: Its node name, as broadcasts' ``destination`` takes it.
        self.name = f"tgbench-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"

    def start(self) -> Worker:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "bench.benchapp",
                "worker",
                "-P",
                "solo",
                "-Q",
                self.queue,
                "-n",
                self.name,
                "-l",
                "WARNING",
                "--without-heartbeat",
                "--without-gossip",
                "--without-mingle",
            ],
            cwd=ROOT,
            env=self.ns.env(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        # Publish nothing before the worker consumes: a RabbitMQ worker that finds
        # messages waiting while its consumer steps start can die ("Consumer does not
        # have any callbacks", when the gate's step adds its control queue).
        self.wait_for_key(
            self.ns.redis, f"{self.ns.prefix}:ready:{self.process.pid}", START_TIMEOUT
        )
        return self

    def check(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(
                f"the worker exited with {self.process.returncode}\n{self.log_tail()}"
            )

    def wait_for_key(self, client: redis.Redis, key: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not client.exists(key):
            self.check()
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {key} after {timeout:.0f}s\n{self.log_tail()}")
            time.sleep(0.02)

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            text = Path(self._log.name).read_text(errors="replace")
            return "worker log:\n" + "\n".join(text.splitlines()[-lines:])
        return "(no worker log)"

    def stop(self) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL to its process group if it lingers."""
        process, self.process = self.process, None
        try:
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    process.wait(10)
        finally:
            self._log.close()
            with contextlib.suppress(OSError):
                os.unlink(self._log.name)

    def __enter__(self) -> Worker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running(ns: Namespace, queue: str | None = None) -> Iterator[Worker]:
    worker = Worker(ns, queue)
    try:
        yield worker.start()
    finally:
        worker.stop()
