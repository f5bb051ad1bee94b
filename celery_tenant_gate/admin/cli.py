"""``celery tenant-gate``: look at the gate and steer it from a shell.

Registered as a ``celery.commands`` entry point, so it takes Celery's global options
like every Celery command (``celery -A proj tenant-gate status``) and works on the
app they load (``ctx.obj.app``)::

    celery -A proj tenant-gate status [CTX...] [--all]
    celery -A proj tenant-gate paused
    celery -A proj tenant-gate pause CTX --reason TEXT
    celery -A proj tenant-gate resume CTX
    celery -A proj tenant-gate held CTX [--limit N]
    celery -A proj tenant-gate purge CTX [--yes]
    celery -A proj tenant-gate check CTX

Every subcommand takes ``--json``. The work is done by
:class:`celery_tenant_gate.admin.service.TenantAdmin` and its results are printed by
:mod:`celery_tenant_gate.admin.render`; this module is the click layer only. Nothing
in the package imports it, so a web process never loads it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from .results import Result
    from .service import TenantAdmin

__all__ = ["tenant_gate"]

#: click's own exit code for bad usage is 2; here 2 means "unknown tenant" (see errors).
_EXIT_USAGE = 1


class _UsageError(click.UsageError):
    exit_code = _EXIT_USAGE


@contextmanager
def _usage_exits_1() -> Iterator[None]:
    try:
        yield
    except click.UsageError as exc:
        if isinstance(exc, _UsageError):
            raise
        raise _UsageError(exc.format_message(), exc.ctx) from None


class _Command(click.Command):
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        with _usage_exits_1():
            return super().parse_args(ctx, args)


class _Group(click.Group):
    command_class = _Command

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        with _usage_exits_1():
            return super().parse_args(ctx, args)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        with _usage_exits_1():
            return super().resolve_command(ctx, args)


def _run(ctx: click.Context, as_json: bool, action: Callable[[TenantAdmin], Result]) -> None:
    """Do *action* on the app's admin, print its result, exit as it says."""
    # Imported here: Celery imports every celery.commands plugin for every command it
    # runs, and `celery worker` of an app without the gate should not pay for the
    # gate's modules (redis, requests, ...).
    from . import render  # noqa: PLC0415
    from .errors import AdminError  # noqa: PLC0415
    from .results import StatusResult  # noqa: PLC0415
    from .service import TenantAdmin  # noqa: PLC0415

    app = getattr(ctx.find_root().obj, "app", None)
    if app is None:  # not run by `celery`: its default app, as `celery` would use
        from celery import current_app  # noqa: PLC0415

        app = current_app
    try:
        result = action(TenantAdmin(app))
    except AdminError as exc:
        click.echo(f"Error: {exc}", err=True)
        ctx.exit(exc.exit_code)
    output = json.dumps(render.document(result), indent=2) if as_json else render.text(result)
    if output:
        click.echo(output)
    # Some tenants of a `status` unknown: the known ones are shown, then the error.
    error = result.error if isinstance(result, StatusResult) else None
    if error is not None:
        click.echo(f"Error: {error}", err=True)
        ctx.exit(error.exit_code)


json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON (stable keys, see the README)."
)


@click.group(name="tenant-gate", cls=_Group, invoke_without_command=True, no_args_is_help=False)
@click.pass_context
def tenant_gate(ctx: click.Context) -> None:
    """Look at and steer celery-tenant-gate: tenant states, pauses, held tasks.

    Exit codes: 0 ok, 1 bad usage or input (nothing changed), 2 unknown tenant,
    3 Redis, the broker or the State API unreachable.
    """
    # The package logs what it does (a purge, a failed State API call) for workers;
    # here the command says it. Without a handler Python would print them on stderr.
    logging.getLogger("celery_tenant_gate").addHandler(logging.NullHandler())
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


@tenant_gate.command()
@click.argument("tenants", nargs=-1, metavar="[CTX]...")
@click.option("--all", "every", is_flag=True, help="Every tenant the shared store has a record of.")
@json_option
@click.pass_context
def status(ctx: click.Context, tenants: tuple[str, ...], every: bool, as_json: bool) -> None:
    """State, verdict, pause, held and dropped tasks of tenants.

    Shows what the workers share (the State API is not asked: see `check`). With no
    CTX: the tenants that are paused or have held tasks; with --all, every tenant
    the store has a record of.
    """
    _run(ctx, as_json, lambda admin: admin.status(tenants, every=every))


@tenant_gate.command()
@json_option
@click.pass_context
def paused(ctx: click.Context, as_json: bool) -> None:
    """The paused tenants: by whom, since when, why."""
    _run(ctx, as_json, lambda admin: admin.paused())


@tenant_gate.command()
@click.argument("tenant", metavar="CTX")
@click.option("--reason", required=True, help="Why (shown by status and paused).")
@json_option
@click.pass_context
def pause(ctx: click.Context, tenant: str, reason: str, as_json: bool) -> None:
    """Hold the tenant's tasks on every worker until `resume`.

    Written to the shared store that every worker reads (their caches learn it within
    milliseconds); no worker needs to be running. Only `resume` ends a pause by hand.
    """
    _run(ctx, as_json, lambda admin: admin.pause(tenant, reason))


@tenant_gate.command()
@click.argument("tenant", metavar="CTX")
@json_option
@click.pass_context
def resume(ctx: click.Context, tenant: str, as_json: bool) -> None:
    """End a pause and release the tenant's held tasks, oldest first.

    If its state still says hold, the gate holds its tasks again (and pauses it
    until the State API says it runs).
    """
    _run(ctx, as_json, lambda admin: admin.resume(tenant))


@tenant_gate.command()
@click.argument("tenant", metavar="CTX")
@click.option(
    "--limit",
    default=100,
    show_default=True,
    type=click.IntRange(min=1),
    help="Show at most this many, oldest first.",
)
@json_option
@click.pass_context
def held(ctx: click.Context, tenant: str, limit: int, as_json: bool) -> None:
    """The tenant's held tasks, oldest first: task id, name, how long they wait."""
    _run(ctx, as_json, lambda admin: admin.held(tenant, limit))


@tenant_gate.command()
@click.argument("tenant", metavar="CTX")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@json_option
@click.pass_context
def purge(ctx: click.Context, tenant: str, yes: bool, as_json: bool) -> None:
    """Drop the tenant's held tasks into its dead-letter list: they never run.

    Asks first unless --yes. A paused tenant stays paused.
    """
    _run(ctx, as_json, lambda admin: admin.purge(tenant, None if yes else _confirm))


def _confirm(question: str) -> bool:
    try:  # asked on stderr, so that stdout stays JSON with --json
        return click.confirm(question, default=False, err=True)
    except click.Abort:  # no terminal, end of input, Ctrl-C
        return False


@tenant_gate.command()
@click.argument("tenant", metavar="CTX")
@json_option
@click.pass_context
def check(ctx: click.Context, tenant: str, as_json: bool) -> None:
    """Ask the State API now (whatever is cached) and show what the gate decides.

    The answer is stored for every worker, as any look-up's is.
    """
    _run(ctx, as_json, lambda admin: admin.check(tenant))
