"""The package stays ruff-clean and mypy-strict: part of the test command."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or "ruff"
    result = _run(ruff, "check", "celery_tenant_gate", "tests", "bench", "example_project")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_mypy_strict_is_clean() -> None:
    result = _run(sys.executable, "-m", "mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def _readme_commands() -> list[str]:
    """The first line of every ``sh`` block of the README, in order."""
    readme = (ROOT / "README.md").read_text()
    return [block.split("\n", 1)[0] for block in readme.split("```sh\n")[1:]]


def test_the_readme_starts_with_the_demo() -> None:
    first = _readme_commands()[0]
    assert first.endswith("python -m example_project.demo")
    assert "'.[demo]'" in first
    assert "\ndemo = [" in (ROOT / "pyproject.toml").read_text()


def test_ci_runs_the_readme_test_command() -> None:
    command = _readme_commands()[1]
    assert "pytest" in command
    assert command in (ROOT / ".ci" / "run").read_text()
