"""The benchmark entry point runs and writes the JSON it promises (not its goals: those
are met in benchmark runs, never in timed tests)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
#: What every benchmark row has (bench/results.py Result), in the JSON it writes.
ROW_FIELDS = {"name", "figure", "unit", "baseline_name", "baseline", "ratio", "goal", "met"}


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
        assert set(row) == ROW_FIELDS
        assert row["figure"] > 0 and row["baseline"] > 0
        assert row["ratio"] == pytest.approx(row["figure"] / row["baseline"])


#: Every scenario of ``python -m bench faults`` gives at least one row (RabbitMQ rows
#: only where RabbitMQ answers).
FAULT_SCENARIOS = {
    "state_api",
    "store_down",
    "store_restart",
    "kill_release",
    "kill9",
    "big_release",
}


@pytest.mark.slow
def test_python_m_bench_faults_quick_writes_every_row(tmp_path: Path) -> None:
    """The fault-injection suite's --quick form runs every scenario to its end (its own
    throw-away Redis servers, real workers) and writes sane rows: the machinery works.
    Whether the goals are met is what the suite measures, not what this checks."""
    out = tmp_path / "faults.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "faults", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode in (0, 1) and out.exists(), output
    rows = json.loads(out.read_text())
    names = [row["name"] for row in rows]
    assert len(names) == len(set(names)), names
    assert not [n for n in names if n.endswith(".crashed")], output
    assert {n.split(".")[1] for n in names} == FAULT_SCENARIOS, names
    for row in rows:
        assert set(row) == ROW_FIELDS
        assert row["name"].startswith("faults.")
        assert isinstance(row["met"], bool)
        assert row["unit"] and row["baseline_name"] and row["goal"]
        assert row["figure"] >= 0 and row["baseline"] > 0, row
        assert row["ratio"] == pytest.approx(row["figure"] / row["baseline"]), row
    assert result.returncode == (0 if all(row["met"] for row in rows) else 1)
