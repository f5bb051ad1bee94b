"""What every benchmark reports: a figure, the baseline measured in the same run, the ratio."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


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
