"""Tenant administration: what ``celery tenant-gate`` does, without the command line.

Each method of :class:`TenantAdmin` does one subcommand and returns a :class:`Report`:
the data that ``--json`` prints (keys documented in the README, stable) and the text
a person reads. A failure a user can act on is an :class:`AdminError`, whose
``exit_code`` the command exits with.

Pauses and resumes are applied here, through the app's :class:`~celery_tenant_gate.gate.Gate`,
as the control task applies them: the shared store in Redis is what every worker
reads, and every write to it is announced to every worker's cache.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis
from kombu.exceptions import OperationalError
from kombu.utils.url import maybe_sanitize_url
from redis.backoff import NoBackoff
from redis.retry import Retry

from celery_tenant_gate.app.singletons import gate_config, gate_for
from celery_tenant_gate.gate.gate import Gate, TenantStatus
from celery_tenant_gate.model.errors import (
    ConfigError,
    InvalidTenantId,
    StateAPIError,
    TenantGateError,
)
from celery_tenant_gate.model.held import HeldMessage
from celery_tenant_gate.model.ids import compile_pattern, validate_tenant_id
from celery_tenant_gate.model.record import TenantRecord
from celery_tenant_gate.model.verdicts import Verdict

__all__ = [
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "AdminError",
    "Report",
    "TenantAdmin",
    "Unavailable",
    "UnknownTenant",
]

#: Done.
EXIT_OK = 0
#: Bad usage or input: an unknown option, a malformed tenant id, a bad setting, or a
#: confirmation not given. Nothing was changed.
EXIT_USAGE = 1
#: Unknown tenant: the shared store has no record of it and it has no held or dropped
#: task. (Not from ``check``: the State API answers State Unknown for a tenant it does
#: not know, and its 404 means a wrong URL or an outage: :data:`EXIT_UNAVAILABLE`.)
EXIT_NOT_FOUND = 2
#: Redis, the broker or the State API could not be reached or gave no usable answer.
EXIT_UNAVAILABLE = 3

#: Why ``purge`` dropped a task, as its dead letter says.
PURGE_REASON = "purged by hand (celery tenant-gate purge)"


class AdminError(TenantGateError):
    """A failure the user can act on; the command prints it and exits with ``exit_code``."""

    exit_code = EXIT_USAGE


class UnknownTenant(AdminError):
    exit_code = EXIT_NOT_FOUND


class Unavailable(AdminError):
    exit_code = EXIT_UNAVAILABLE


@dataclass(frozen=True)
class Report:
    """What a subcommand has to say."""

    #: What ``--json`` prints.
    data: dict[str, Any]
    #: What a person reads (may be empty).
    text: str
    #: A failure to report once the rest is printed (``status`` of several tenants,
    #: some of them unknown).
    error: AdminError | None = None


class TenantAdmin:
    """The subcommands of ``celery tenant-gate``, for one Celery app.

    >>> TenantAdmin(app).status(["Cust12345"]).text  # doctest: +SKIP
    """

    def __init__(self, app: Any, *, clock: Callable[[], float] = time.time) -> None:
        try:
            self.config = gate_config(app)
        except ConfigError as exc:
            raise AdminError(str(exc)) from None
        self.app = app
        self._clock = clock
        self._pattern = compile_pattern(self.config.tenant_id_pattern)
        self._gate: Gate | None = None

    @property
    def gate(self) -> Gate:
        if self._gate is None:
            self._gate = gate_for(self.app)
        return self._gate

    # -- the subcommands -------------------------------------------------------------

    def status(self, tenants: Sequence[str] = (), *, every: bool = False) -> Report:
        """The tenants' state, verdict, pause, held and dropped tasks, from the shared
        store (the State API is not asked). No tenants: those paused or holding tasks;
        *every*: all the store has a record of."""
        with self._failures():
            wanted = list(dict.fromkeys(self._tenant(value) for value in tenants))
            if wanted and every:
                raise AdminError("give tenants or --all, not both")
            self._connect(broker=True)
            if wanted:
                found = [self._status(ctx) for ctx in wanted]
                shown = [status for status in found if _known(status)]
            else:
                store = self.gate.states.store
                names = (
                    store.tenants() if every else set(store.paused()) | set(store.held_tenants())
                )
                found = [self._status(ctx) for ctx in sorted(names)]
                shown = found if every else [status for status in found if _needs_attention(status)]
            now = self._clock()
            if shown:
                text = _status_table(shown, now)
            elif wanted:
                text = ""
            else:
                text = "No tenant has a record." if every else "No paused tenant, no held task."
            unknown = [status.context_id for status in found if wanted and not _known(status)]
            error: AdminError | None = None
            if len(unknown) == 1:
                error = _unknown(unknown[0])
            elif unknown:
                error = UnknownTenant(
                    f"unknown tenants {', '.join(unknown)}: the shared store has no record "
                    "of them and they have no held or dropped task"
                )
            return Report({"tenants": [tenant_json(status) for status in shown]}, text, error)

    def paused(self) -> Report:
        """The paused tenants: by whom, since when, why."""
        with self._failures():
            self._connect(broker=True)
            found = [self._status(ctx) for ctx in sorted(self.gate.paused())]
            now = self._clock()
            rows = []
            for status in found:
                record = status.record
                by, since, reason = "?", "-", ""
                if record is not None:
                    by, reason = record.paused_by or "?", record.pause_reason
                    since = _ago(record.paused_at, now)
                rows.append([status.context_id, by, since, status.held, reason])
            text = _table(["TENANT", "BY", "SINCE", "HELD", "REASON"], rows)
            return Report(
                {"tenants": [tenant_json(status) for status in found]},
                text if found else "No tenant is paused.",
            )

    def pause(self, tenant: str, reason: str) -> Report:
        """Pause a tenant by hand for every worker, until :meth:`resume`."""
        with self._failures():
            ctx = self._tenant(tenant)
            if not reason.strip():
                raise AdminError("the reason must not be empty: say why")
            self._connect(broker=False)
            store = self.gate.states.store
            known = store.get(ctx) is not None
            changed = self.gate.pause(ctx, reason=reason, by="manual")
            record = store.get(ctx)
            data = {
                "context_id": ctx,
                "paused": True,
                "changed": changed,
                "known": known,
                "pause_reason": record.pause_reason if record is not None else reason,
                "paused_by": record.paused_by if record is not None else "manual",
            }
            if changed:
                text = f"Paused {ctx} ({reason}): its tasks are held until resume."
            else:
                text = f"{ctx} was paused already; reason now: {data['pause_reason']}"
            if not known:
                text += f"\nNote: {ctx} had no record yet (a typo?)."
            return Report(data, text)

    def resume(self, tenant: str) -> Report:
        """End a tenant's pause and release its held tasks, oldest first."""
        with self._failures():
            ctx = self._tenant(tenant)
            self._connect(broker=True)
            before = self._known_status(ctx)
            was_paused = before.record is not None and before.record.paused
            released = self.gate.resume(ctx)
            after = self._status(ctx)
            data = {
                "context_id": ctx,
                "was_paused": was_paused,
                "released": released,
                "verdict": after.verdict.value,
            }
            first = f"Resumed {ctx}" if was_paused else f"{ctx} was not paused"
            text = f"{first}: {released} held task(s) released, oldest first."
            if after.verdict is not Verdict.RUN:
                why = self._why(after.record, self._clock())
                text += f"\nIts verdict is still {after.verdict.value} ({why})."
            return Report(data, text)

    def held(self, tenant: str, limit: int = 100) -> Report:
        """The tenant's oldest *limit* held tasks: id, name, how long they wait."""
        with self._failures():
            ctx = self._tenant(tenant)
            if limit < 1:
                raise AdminError(f"the limit must be at least 1, not {limit}")
            self._connect(broker=True)
            status = self._known_status(ctx)
            messages = self.gate.held(ctx, limit) if status.held else []
            now = self._clock()
            data = {
                "context_id": ctx,
                "queue": status.queue,
                "total": status.held,
                "messages": [_held_json(message, now) for message in messages],
            }
            if not messages:
                return Report(data, f"{ctx} has no held task.")
            rows = [
                [
                    message.task_id,
                    message.task_name,
                    _duration(now - message.held_at) if message.held_at else "?",
                    message.holds,
                    message.eta or "-",
                ]
                for message in messages
            ]
            table = _table(["TASK ID", "TASK", "WAITING", "HOLDS", "ETA"], rows)
            text = (
                f"{table}\n{len(messages)} of {status.held} held task(s) of {ctx}, oldest "
                f"first, in queue {status.queue}."
            )
            return Report(data, text)

    def purge(self, tenant: str, confirm: Callable[[str], bool] | None = None) -> Report:
        """Drop the tenant's held tasks into its dead-letter list, after *confirm*
        (asked the question) says yes; without *confirm*, at once."""
        with self._failures():
            ctx = self._tenant(tenant)
            self._connect(broker=True)
            status = self._known_status(ctx)
            if status.held and confirm is not None:
                question = (
                    f"Drop the {status.held} held task(s) of {ctx}? They will not run "
                    "(kept in its dead-letter list)."
                )
                if not confirm(question):
                    raise AdminError("not confirmed: nothing was dropped (--yes: do not ask)")
            dropped = self.gate.purge(ctx, reason=PURGE_REASON)
            key = self.gate.dead.key(ctx)
            data = {
                "context_id": ctx,
                "dropped": dropped,
                "dropped_total": self.gate.dead.count(ctx),
                "dead_letter_key": key,
            }
            if not dropped:
                return Report(data, f"{ctx} has no held task: nothing dropped.")
            return Report(data, f"Dropped {dropped} held task(s) of {ctx} (kept in Redis: {key}).")

    def check(self, tenant: str) -> Report:
        """Ask the State API now, whatever is cached or stored, store the answer for
        every worker (as any look-up does), and say what the gate decides."""
        with self._failures():
            ctx = self._tenant(tenant)
            self._connect(broker=False)
            record = self.gate.states.refresh(ctx, raise_errors=True)
            now = self._clock()
            verdict = self.config.policy.decide(record, now)
            state = record.state if record is not None else None
            valid_until = state.valid_until if state is not None else None
            data = {
                "context_id": ctx,
                "state": _state_name(record),
                "raw_state": state.raw_state if state is not None else "",
                "is_running": state.is_running if state is not None else None,
                "valid_until": valid_until.timestamp() if valid_until else None,
                "endpoint": state.endpoint if state is not None else "",
                "api": state.api if state is not None else "",
                "paused": record is not None and record.paused,
                "verdict": verdict.value,
                "why": self._why(record, now),
            }
            valid = "-"
            if valid_until is not None:
                until = valid_until.isoformat(timespec="seconds")
                valid = f"{_duration(valid_until.timestamp() - now)} more (ValidUntil {until})"
            running = "-" if state is None else str(state.is_running).lower()
            rows = [
                ("tenant", ctx),
                ("state", f"{data['state'] or '(none)'} (IsRunning: {running})"),
                ("valid", valid),
                ("endpoint", data["endpoint"] or "-"),
                ("api", data["api"] or "-"),
                ("verdict", f"{verdict.value}: {data['why']}"),
            ]
            return Report(data, "\n".join(f"{name:<9} {value}" for name, value in rows))

    # -- helpers --------------------------------------------------------------------------

    def _tenant(self, value: str) -> str:
        return validate_tenant_id(value, self._pattern)

    def _status(self, ctx: str) -> TenantStatus:
        return self.gate.state(ctx, look_up=False)

    def _known_status(self, ctx: str) -> TenantStatus:
        status = self._status(ctx)
        if not _known(status):
            raise _unknown(ctx)
        return status

    def redis_url(self) -> str:
        """The shared state's Redis URL, its password masked."""
        return str(maybe_sanitize_url(self.config.require_redis_url()))

    def broker_url(self) -> str:
        """The broker URL, its password masked."""
        return str(self.app.connection_for_write().as_uri())

    def _connect(self, *, broker: bool) -> None:
        """Fail fast, naming the URL, when Redis (or the broker) cannot be reached:
        before anything is done, not half-way."""
        client = redis.Redis.from_url(
            self.config.require_redis_url(),
            socket_connect_timeout=3,
            socket_timeout=5,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            client.ping()
        except redis.RedisError as exc:
            raise Unavailable(
                f"cannot connect to Redis at {self.redis_url()} (the shared tenant state, "
                f"tenant_gate_redis_url): {exc}"
            ) from None
        finally:
            client.close()
        if not broker:
            return
        try:
            with self.app.connection_for_write() as connection:
                connection.ensure_connection(
                    max_retries=1, interval_start=0, interval_step=0, timeout=5
                )
        except Exception as exc:  # kombu raises its own errors or the transport's
            raise Unavailable(
                f"cannot connect to the broker at {self.broker_url()} (broker_url): {exc}"
            ) from None

    @contextmanager
    def _failures(self) -> Iterator[None]:
        """The errors a user can act on, as :class:`AdminError`: no traceback."""
        try:
            yield
        except (InvalidTenantId, ConfigError) as exc:
            raise AdminError(str(exc)) from None
        except StateAPIError as exc:
            raise Unavailable(str(exc)) from None
        except TimeoutError as exc:  # a socket, or another process moving the held tasks
            raise Unavailable(
                f"timed out: {exc} (Redis at {self.redis_url()}, broker at "
                f"{self.broker_url()}); try again"
            ) from None
        except (redis.RedisError, OperationalError, ConnectionError) as exc:
            raise Unavailable(
                f"lost the connection to Redis ({self.redis_url()}) or the broker "
                f"({self.broker_url()}): {exc}"
            ) from None
        except AdminError:
            raise
        except TenantGateError as exc:  # e.g. a release whose tasks lead nowhere
            raise AdminError(str(exc)) from None
        except Exception as exc:  # the broker refused something (an AMQP channel error)
            if getattr(exc, "reply_code", None) is None:
                raise
            raise Unavailable(f"the broker at {self.broker_url()} refused: {exc}") from None

    def _why(self, record: TenantRecord | None, now: float) -> str:
        """Why the gate decides what it decides, in a few words."""
        if record is not None and record.deleted:
            return "the tenant is taken as deleted: its tasks are dropped"
        policy = self.config.policy
        failure = f"failure policy: {policy.failure_verdict.value}"
        if record is None or record.state is None:
            error = f" ({record.error})" if record is not None and record.error else ""
            because = f"no state known{error}; {failure}"
        elif now > record.fresh_until + policy.grace_period:
            because = f"the last state known is too old; {failure}"
        else:
            verdict = policy.for_state(record.state)
            does = "runs" if verdict is Verdict.RUN else f"{verdict.value}s"
            because = f"state {_state_name(record)} {does}"
        if record is not None and record.paused:
            joint = ", but" if because.endswith("runs") else ";"
            by, reason = record.paused_by or "?", record.pause_reason or "-"
            because += f"{joint} paused by {by}: {reason}"
        return because


def _unknown(ctx: str) -> UnknownTenant:
    return UnknownTenant(
        f"unknown tenant {ctx}: the shared store has no record of it and it has no held or "
        f"dropped task (check {ctx} asks the State API)"
    )


def _known(status: TenantStatus) -> bool:
    return status.record is not None or status.held > 0 or status.dropped > 0


def _needs_attention(status: TenantStatus) -> bool:
    return status.held > 0 or (status.record is not None and status.record.paused)


# -- what is printed ------------------------------------------------------------------------


def tenant_json(status: TenantStatus) -> dict[str, Any]:
    """A tenant as ``status --json`` and ``paused --json`` print it."""
    record = status.record
    state = record.state if record is not None else None
    paused = record is not None and record.paused
    return {
        "context_id": status.context_id,
        "verdict": status.verdict.value,
        "state": _state_name(record),
        "is_running": state.is_running if state is not None else None,
        "paused": paused,
        "pause_reason": record.pause_reason if record is not None and paused else "",
        "paused_by": record.paused_by if record is not None and paused else "",
        "paused_at": _time(record.paused_at) if record is not None and paused else None,
        "deleted": record is not None and record.deleted,
        "held": status.held,
        "dropped": status.dropped,
        "queue": status.queue,
        "endpoint": state.endpoint if state is not None else "",
        "api": state.api if state is not None else "",
        "source": record.source.value if record is not None and state is not None else None,
        "learnt_at": _time(record.learnt_at) if record is not None else None,
        "fresh_until": _time(record.fresh_until) if record is not None else None,
        "error": record.error if record is not None else "",
        "error_at": _time(record.error_at) if record is not None and record.error else None,
        "last_change": _last_change(record),
    }


def _held_json(message: HeldMessage, now: float) -> dict[str, Any]:
    held_at = message.held_at
    return {
        "task_id": message.task_id,
        "task_name": message.task_name,
        "held_at": held_at,
        "age": round(now - held_at, 3) if held_at else None,
        "holds": message.holds,
        "eta": message.eta,
    }


def _status_table(statuses: Sequence[TenantStatus], now: float) -> str:
    rows = []
    notes = []
    for status in statuses:
        record = status.record
        paused, reason = "no", ""
        if record is not None and record.paused:
            paused = f"by {record.paused_by or '?'}, {_ago(record.paused_at, now)}"
            reason = record.pause_reason
        if record is not None and record.deleted:
            paused = "deleted" if paused == "no" else f"deleted; {paused}"
        state = record.state if record is not None else None
        rows.append(
            [
                status.context_id,
                _state_name(record) or "(none)",
                status.verdict.value,
                paused,
                status.held,
                status.dropped,
                state.endpoint if state is not None and state.endpoint else "-",
                _ago(_last_change(record), now),
                reason,
            ]
        )
        if record is not None and record.error:
            notes.append(
                f"{status.context_id}: the last State API call failed "
                f"{_ago(record.error_at, now)}: {record.error}"
            )
    headers = ["TENANT", "STATE", "VERDICT", "PAUSED", "HELD", "DROPPED", "ENDPOINT"]
    return "\n".join([_table([*headers, "LAST CHANGE", "REASON"], rows), *notes])


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(cell) for cell in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def _state_name(record: TenantRecord | None) -> str | None:
    if record is None or record.state is None:
        return None
    state = record.state
    if state.state.api_name == "Unrecognised" and state.raw_state:
        return state.raw_state  # what the State API said, not our word for it
    return state.state.api_name


def _last_change(record: TenantRecord | None) -> float | None:
    if record is None:
        return None
    return _time(max(record.learnt_at, record.paused_at, record.error_at))


def _time(value: float) -> float | None:
    return value if value > 0 else None


def _ago(value: float | None, now: float) -> str:
    return f"{_duration(now - value)} ago" if value else "-"


def _duration(seconds: float) -> str:
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole}s"
    minutes, whole = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m {whole:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours:02d}h"
