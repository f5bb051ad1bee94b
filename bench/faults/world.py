"""One fault scenario's world: its names (a fresh prefix), its app (this process's
twin of the workers'), its gate, its workers, the ledger the task bodies write to, and
the counting of lost, duplicated and out-of-order tasks. Clean-up deletes exactly what
the world created: its Redis keys, its broker queues, its workers.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from types import TracebackType
from typing import Any

import redis
from kombu import Connection

from bench.faults import faultapp
from bench.faults.procs import FaultWorker
from bench.workers import delete_amqp, delete_redis_keys
from celery_tenant_gate import install
from celery_tenant_gate.gate.gate import Gate
from celery_tenant_gate.model.record import Source
from celery_tenant_gate.model.states import State, TenantState


@dataclass(frozen=True)
class Ran:
    """One task body that ran: its tenant, sequence number, process and start time."""

    ctx: str
    seq: int
    pid: int
    at: float


class Ledger:
    """The bodies that ran, pulled from the ledger list as they come (LPOP in batches,
    BLPOP with a timeout when it is empty: never a sleep)."""

    def __init__(self, client: redis.Redis, key: str) -> None:
        self.client = client
        self.key = key
        self.rows: list[Ran] = []

    def pull(self, timeout: float = 0.1) -> int:
        """Take what the bodies wrote since; waits up to *timeout* s for one if none."""
        raw: Any = self.client.lpop(self.key, 5000)
        if not raw:
            popped: Any = self.client.blpop([self.key], timeout=timeout)
            raw = [] if popped is None else [popped[1]]
        for item in raw:
            ctx, seq, pid, at = item.decode().split()
            self.rows.append(Ran(ctx, int(seq), int(pid), float(at)))
        return len(raw)

    def wait(
        self,
        done: Callable[[], bool],
        timeout: float,
        check: Callable[[], None] = lambda: None,
    ) -> bool:
        """Pull until *done()* or *timeout* seconds; whether it was done."""
        deadline = time.monotonic() + timeout
        while not done():
            check()
            if time.monotonic() > deadline:
                return False
            self.pull(min(0.1, max(0.01, deadline - time.monotonic())))
        return True

    def settle(
        self,
        done: Callable[[], bool],
        quiet: float,
        limit: float,
        check: Callable[[], None] = lambda: None,
    ) -> bool:
        """Pull until *done()*, or until no body ran for *quiet* seconds (what is
        missing is lost, not late), at most *limit* seconds; whether it was done."""
        deadline = time.monotonic() + limit
        seen, since = len(self.rows), time.monotonic()
        while not done():
            check()
            now = time.monotonic()
            if len(self.rows) != seen:
                seen, since = len(self.rows), now
            if now > deadline or now - since > quiet:
                return False
            self.pull(0.1)
        return True

    def of(self, ctx: str, since: float = 0.0) -> list[Ran]:
        return [r for r in self.rows if r.ctx == ctx and r.at >= since]

    def count(self, ctxs: Iterable[str], since: float = 0.0) -> int:
        wanted = set(ctxs)
        return sum(1 for r in self.rows if r.ctx in wanted and r.at >= since)

    def distinct(self, ctx: str) -> int:
        return len({r.seq for r in self.rows if r.ctx == ctx})


@dataclass(frozen=True)
class Tally:
    """Published against ran, per task (tenant, seq)."""

    published: int
    lost: int
    duplicates: int
    #: The first few lost (tenant, seq), for the record.
    missing: tuple[tuple[str, int], ...] = ()

    @classmethod
    def of(cls, published: dict[str, Sequence[int]], rows: Sequence[Ran]) -> Tally:
        ran = Counter((r.ctx, r.seq) for r in rows if r.ctx in published)
        wanted = {(ctx, seq) for ctx, seqs in published.items() for seq in seqs}
        missing = sorted(wanted - set(ran))
        duplicates = sum(n - 1 for n in ran.values())
        return cls(len(wanted), len(missing), duplicates, tuple(missing[:5]))

    def text(self) -> str:
        lost = f"{self.lost} lost" + (f" {list(self.missing)}" if self.missing else "")
        return f"{self.published} published, {lost}, {self.duplicates} duplicated"


def new_prefix() -> str:
    return f"tgfault:{uuid.uuid4().hex[:8]}"


class World:
    """Use as a context manager: its exit stops the workers and deletes everything."""

    def __init__(
        self, broker: str, ledger_url: str, store_url: str, state_api: str, **env: str
    ) -> None:
        self.prefix = new_prefix()
        self.broker, self.ledger_url, self.store_url = broker, ledger_url, store_url
        self.env = {
            **os.environ,
            "TGF_BROKER": broker,
            "TGF_STORE": store_url,
            "TGF_LEDGER": ledger_url,
            "TGF_PREFIX": self.prefix,
            "TGF_STATE_API": state_api,
            "TGF_PARENT": str(os.getpid()),
            **env,
        }
        self.app = faultapp.create_app(self.env)
        self.gate: Gate = install(self.app)
        self.task = self.app.tasks[faultapp.TASK]
        self.redis = redis.Redis.from_url(ledger_url)
        self.ledger = Ledger(self.redis, f"{self.prefix}:ran")
        self.work_queue = f"{self.prefix}.work"
        self.workers: list[FaultWorker] = []
        self.tenants: set[str] = set()
        self.logs: list[str] = []
        #: The task id of every task published, by (tenant, seq).
        self.ids: dict[tuple[str, int], str] = {}

    @property
    def is_amqp(self) -> bool:
        return self.broker.startswith(("amqp", "pyamqp"))

    @property
    def broker_name(self) -> str:
        return "rabbitmq" if self.is_amqp else "redis"

    # -- workers --------------------------------------------------------------------

    def worker(self, **env: str) -> FaultWorker:
        """A new worker (with *env* on top of the world's), started and consuming."""
        worker = FaultWorker({**self.env, **env}, self.work_queue)
        self.workers.append(worker)
        return worker.start(self.redis, f"{self.prefix}:ready")

    def check(self) -> None:
        for worker in self.workers:
            if worker.process is not None:
                worker.check()

    def worker_logs(self) -> str:
        """Every log of this world's workers, those already gone too."""
        return "\n".join([*self.logs, *(worker.log() for worker in self.workers)])

    # -- tenants and tasks ------------------------------------------------------------

    def learn(self, ctx: str, state: State = State.RUNNING, hours: float = 2.0) -> None:
        """Store *state* for the tenant, valid for *hours* (no State API call needed)."""
        self.tenants.add(ctx)
        until = datetime.now(timezone.utc) + timedelta(hours=hours)
        self.gate.states.learn(
            TenantState(
                ctx,
                state,
                state.api_name,
                state.is_running,
                valid_until=until,
                endpoint=f"https://online.example.invalid/{ctx}",
                api=f"https://online.example.invalid/{ctx}/api",
            ),
            source=Source.MANUAL,
        )

    def publish(self, tasks: Iterable[tuple[str, int]], busy_ms: int = 0) -> float:
        """Publish ``(ctx, seq)`` tasks in this order, on one producer; returns when it
        began (time.time())."""
        began = time.time()
        apply, ids = self.task.apply_async, self.ids
        with self.app.producer_or_acquire() as producer:
            for ctx, seq in tasks:
                self.tenants.add(ctx)
                ids[ctx, seq] = apply((ctx, seq, busy_ms), producer=producer).id
        return began

    def held(self, ctx: str) -> int:
        """Messages in the tenant's queue (its held tasks)."""
        return self.gate.held_queues.count(self.gate.queue_for(ctx))

    def work_count(self) -> int:
        return self.gate.held_queues.count(self.work_queue)

    @contextlib.contextmanager
    def counter(self, queue: str) -> Iterator[Callable[[], int]]:
        """A cheap count of *queue*'s waiting messages, to poll: on RabbitMQ over one
        connection kept open (a connection a count would cost more than the count)."""
        if not self.is_amqp:
            yield lambda: self.gate.held_queues.count(queue)
            return
        with Connection(self.broker, connect_timeout=5) as conn:
            conn.ensure_connection(max_retries=3)
            channels: list[Any] = [conn.channel()]

            def count() -> int:
                try:
                    return int(channels[0].queue_declare(queue, passive=True)[1])
                except conn.channel_errors:  # no such queue: that channel is closed
                    channels[0] = conn.channel()
                    return 0

            yield count

    # -- clean-up -----------------------------------------------------------------------

    def close(self) -> None:
        try:
            for worker in self.workers:  # all at once: a warm shutdown takes a while
                worker.terminate()
            for worker in self.workers:
                worker.stop()
            self.logs = [self.worker_logs()]
            keep = os.environ.get("TGFAULT_LOG_DIR")  # to read the workers' logs after
            if keep:
                name = self.prefix.replace(":", "-") + ".log"
                with open(os.path.join(keep, name), "w") as out:
                    out.write(self.logs[0])
            for worker in self.workers:
                worker.discard_log()
            self.workers = []
        finally:
            try:
                self._delete()
            finally:
                self.gate.states.close()
                self.redis.close()
                self.app.close()

    def _delete(self) -> None:
        tenant_queues = [self.gate.queue_for(ctx) for ctx in sorted(self.tenants)]
        control = f"{self.prefix}.control"
        if self.is_amqp:
            with contextlib.suppress(Exception):
                delete_amqp(
                    self.broker,
                    [self.work_queue, control, *tenant_queues],
                    [self.work_queue, control],
                )
        for url in {self.ledger_url, self.store_url, self.broker if not self.is_amqp else ""}:
            if not url:
                continue
            with contextlib.suppress(redis.RedisError), redis.Redis.from_url(url) as client:
                delete_redis_keys(client, self.prefix)

    def __enter__(self) -> World:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
