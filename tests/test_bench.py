"""The benchmark entry point runs and writes the JSON it promises (not its goals: those
are met in benchmark runs, never in timed tests)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.slow
def test_python_m_bench_writes_every_field(tmp_path: Path, redis_url: str) -> None:
    out = tmp_path / "results.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "lookup",
            "--quick",
            "--redis",
            redis_url,
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode in (0, 1) and out.exists(), result.stdout + result.stderr
    rows = json.loads(out.read_text())
    assert rows, "no benchmark ran"
    for row in rows:
        assert set(row) == {
            "name",
            "figure",
            "unit",
            "baseline_name",
            "baseline",
            "ratio",
            "goal",
            "met",
        }
        assert row["figure"] > 0 and row["baseline"] > 0
        assert row["ratio"] == pytest.approx(row["figure"] / row["baseline"])
