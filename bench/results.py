"""What every benchmark reports (a figure, the baseline measured in the same run, the
ratio), and the timing helpers they share."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Result:
    name: str
    figure: float
    unit: str
    #: What the figure is compared with, measured in the same run.
    baseline_name: str
    baseline: float
    #: figure / baseline
    ratio: float
    goal: str
    met: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        mark = "MET " if self.met else "MISS"
        return (
            f"[{mark}] {self.name}: {self.figure:.3f} {self.unit} | "
            f"{self.baseline_name}: {self.baseline:.3f} {self.unit} | "
            f"ratio {self.ratio:.4f} | goal {self.goal}"
        )


def percentile(values: Sequence[float], pct: float) -> float:
    """The *pct* percentile of *values* (linear between the two nearest ranks)."""
    if not values:
        raise ValueError("no values to take a percentile of")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Spread:
    """p50, p99 and max of a set of durations, in seconds."""

    count: int
    p50: float
    p99: float
    max: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Spread:
        return cls(len(seconds), percentile(seconds, 50), percentile(seconds, 99), max(seconds))

    def ms(self) -> str:
        return (
            f"p50 {self.p50 * 1e3:.2f} ms, p99 {self.p99 * 1e3:.2f} ms, "
            f"max {self.max * 1e3:.2f} ms (n={self.count})"
        )


def timed(
    fn: Callable[[], object], repeats: int, before: Callable[[], object] | None = None
) -> list[float]:
    """Seconds each of *repeats* calls of *fn* took (*before()*, untimed, before each)."""
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def alternating(rounds: int, measures: Mapping[str, Callable[[], T]]) -> dict[str, list[T]]:
    """What each of *measures* returns, *rounds* times, in an order reversed every
    round (A B, B A, A B, ...): on a shared machine, drift hits all of them alike."""
    results: dict[str, list[T]] = {name: [] for name in measures}
    order = list(measures.items())
    for i in range(rounds):
        for name, measure in order if i % 2 == 0 else order[::-1]:
            results[name].append(measure())
    return results


def by_round(values: Mapping[str, Sequence[float]]) -> str:
    """``plain 510 498; gated 505 490``: each series' rounds, for printing."""
    return "; ".join(f"{name} {' '.join(f'{v:.0f}' for v in vs)}" for name, vs in values.items())
