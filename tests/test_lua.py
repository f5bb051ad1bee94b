"""The Redis Lua scripts: each ``.lua`` file of the package is run by a module beside
it, compiles in Redis, and is found wherever the package is installed (a wheel lists
it in its package data; a zip on ``sys.path`` works too)."""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path

import pytest
import redis

import celery_tenant_gate
from celery_tenant_gate.io.lua import lua_script, lua_scripts_read

if sys.version_info >= (3, 11):
    from importlib.resources.abc import Traversable
else:
    from importlib.abc import Traversable

PACKAGE = "celery_tenant_gate"
ROOT = Path(celery_tenant_gate.__file__).parent


def _lua_files(folder: Traversable, package: str) -> Iterator[tuple[str, str]]:
    """``(package, name)`` of every ``{package}/lua/{name}.lua`` under *folder*."""
    for entry in folder.iterdir():
        if entry.is_dir() and entry.name == "lua":
            for script in entry.iterdir():
                if script.name.endswith(".lua"):
                    yield package, script.name.removesuffix(".lua")
        elif entry.is_dir() and entry.name != "__pycache__":
            yield from _lua_files(entry, f"{package}.{entry.name}")


SCRIPTS = sorted(_lua_files(files(PACKAGE), PACKAGE))


def test_the_scripts_are_found_in_the_installed_package() -> None:
    assert ("celery_tenant_gate.io.store", "guarded_write") in SCRIPTS
    assert ("celery_tenant_gate.io.broker", "release") in SCRIPTS
    assert not [p for p in ROOT.rglob("*.lua") if p.parent.name != "lua"], "outside lua/"


def test_every_script_is_run_by_a_module_beside_it() -> None:
    for package in {package for package, _ in SCRIPTS}:
        path = importlib.import_module(package).__path__
        for module in pkgutil.iter_modules(path, f"{package}."):
            importlib.import_module(module.name)
    orphans = set(SCRIPTS) - lua_scripts_read()
    assert not orphans, f"no module reads {sorted(orphans)}"


@pytest.mark.parametrize(("package", "name"), SCRIPTS)
def test_each_script_compiles_in_redis_and_runs_by_its_sha(
    redis_client: redis.Redis, package: str, name: str
) -> None:
    text = lua_script(package, name)
    assert text == (files(package) / "lua" / f"{name}.lua").read_text(encoding="utf-8")
    assert lua_script(package, name) is text  # read once
    # SCRIPT LOAD compiles the script (a syntax error is refused) and answers the SHA1
    # by which redis-py's Script runs it.
    assert redis_client.script_load(text) == redis_client.register_script(text).sha


def test_the_package_data_ships_every_script() -> None:
    tomllib = pytest.importorskip("tomllib")
    pyproject = tomllib.loads((ROOT.parent / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = pyproject["tool"]["setuptools"]["package-data"][PACKAGE]
    shipped = {path for pattern in patterns for path in ROOT.glob(pattern)}
    assert set(ROOT.rglob("*.lua")) <= shipped


_IMPORT_FROM_THE_ZIP = """
import json, sys
import celery_tenant_gate.io.broker.redis_control
import celery_tenant_gate.io.broker.redis_held
import celery_tenant_gate.io.store.epoch
import celery_tenant_gate.io.store.state_store
from celery_tenant_gate.io.lua import lua_script, lua_scripts_read
json.dump({
    "file": celery_tenant_gate.__file__,
    "scripts": {f"{p}:{n}": lua_script(p, n) for p, n in sorted(lua_scripts_read())},
}, sys.stdout)
"""


def test_the_scripts_load_from_a_zipped_package(tmp_path: Path) -> None:
    archive = tmp_path / "package.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in ROOT.rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                zipped.write(path, path.relative_to(ROOT.parent).as_posix())
    env = {**os.environ, "PYTHONPATH": str(archive)}
    answer = subprocess.run(
        [sys.executable, "-c", _IMPORT_FROM_THE_ZIP],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    loaded = json.loads(answer.stdout)
    assert loaded["file"].startswith(str(archive))
    assert loaded["scripts"] == {f"{p}:{n}": lua_script(p, n) for p, n in SCRIPTS}
