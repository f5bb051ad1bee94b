"""Run every benchmark: ``python -m bench [--quick] [--redis URL] [--json FILE]``.

``python -m bench faults`` runs the fault-injection suite (bench/faults), which is
not part of the default run: it takes minutes and measures failures, not speed."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from bench import (
    faults,
    gate_overhead,
    gate_scale,
    lookup,
    pause_latency,
    redis_release_latency,
    release,
    session,
    webhook,
)
from bench.results import Result

BENCHMARKS: dict[str, Callable[..., list[Result]]] = {
    "lookup": lookup.run,
    "gate_overhead": gate_overhead.run,
    "gate_scale": gate_scale.run,
    "release": release.run,
    "webhook": webhook.run,
    "pause_latency": pause_latency.run,
    "redis_release_latency": redis_release_latency.run,
    "session": session.run,
    "faults": faults.run,
}
#: What runs when no name is given.
DEFAULT = [name for name in BENCHMARKS if name != "faults"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"which to run (default: {DEFAULT}; also: faults)")
    parser.add_argument("--redis", help="Redis URL (default: a throw-away embedded redis-server)")
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke test)")
    parser.add_argument("--json", metavar="FILE", help="also write all results as JSON")
    args = parser.parse_args(argv)
    unknown = set(args.names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s): {sorted(unknown)}")
    results: list[Result] = []
    for name in args.names or DEFAULT:
        for result in BENCHMARKS[name](redis_url=args.redis, quick=args.quick):
            print(result.line(), flush=True)
            results.append(result)
    if args.json:
        with open(args.json, "w") as out:
            json.dump([r.as_dict() for r in results], out, indent=2)
    return 0 if all(r.met for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
