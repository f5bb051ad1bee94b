"""The layering of the package, checked: imports flow one way.

    model -> config -> io -> gate -> observe -> app -> worker | admin
                        \\-> web

A module may import its own layer and the layers before it, never a later one. The
web adapters (``web/``) stand beside the worker side: they may import the model, the
settings and the I/O layer, and nothing of ``gate``, ``observe``, ``app``, ``worker`` or
``admin``, so that a web process that only receives webhooks never loads the worker.
``worker`` and ``admin`` do not import each other. The model and the settings import
no I/O library and no Celery. Every import counts: at the top, inside functions, and
under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import pytest

import celery_tenant_gate

PACKAGE = "celery_tenant_gate"
ROOT = Path(celery_tenant_gate.__file__).parent

#: Each layer with what it may import (besides itself). The root package is always
#: allowed (``__version__``; its ``__init__`` imports nothing at run time).
ALLOWED: Mapping[str, frozenset[str]] = {
    "model": frozenset(),
    "config": frozenset({"model"}),
    "io": frozenset({"model", "config", "_compat"}),
    "_compat": frozenset({"model", "config"}),
    "gate": frozenset({"model", "config", "io", "_compat"}),
    "observe": frozenset({"model", "config", "io", "_compat", "gate"}),
    "app": frozenset({"model", "config", "io", "_compat", "gate", "observe"}),
    "worker": frozenset({"model", "config", "io", "_compat", "gate", "observe", "app"}),
    "admin": frozenset({"model", "config", "io", "_compat", "gate", "observe", "app"}),
    "web": frozenset({"model", "config", "io", "_compat"}),
    "testing": frozenset({"model"}),
}

#: Libraries that do I/O or are Celery: the model and the settings import none.
OUTSIDE = frozenset(
    {"celery", "kombu", "amqp", "redis", "requests", "urllib3", "jwt", "socket", "http"}
)
PURE_LAYERS = ("model", "config")


def layer_of(module: str) -> str:
    """``celery_tenant_gate.io.store.cache`` -> ``io``; the root package -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def module_name(path: Path) -> str:
    parts = [PACKAGE, *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(module: str, source: str, *, is_package: bool) -> Iterator[str]:
    """Every module *source* imports, absolute (relative imports resolved)."""
    package = module if is_package else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            yield target
            if target.startswith(PACKAGE):  # `from pkg import submodule`
                yield from (f"{target}.{alias.name}" for alias in node.names)


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        module = module_name(path)
        graph[module] = set(
            imports_of(module, path.read_text(), is_package=path.name == "__init__.py")
        )
    return graph


def violations(graph: Mapping[str, Iterable[str]]) -> list[str]:
    """Each import that goes against the layering, as ``importer -> imported (why)``."""
    found = []
    for importer, imported in sorted(graph.items()):
        source = layer_of(importer)
        if source == "":
            continue  # the root package's lazy public API may name anything
        for target in sorted(set(imported)):
            top = target.split(".")[0]
            if source in PURE_LAYERS and top in OUTSIDE:
                found.append(f"{importer} -> {target} (the {source} layer does no I/O)")
            if top != PACKAGE:
                continue
            dest = layer_of(target)
            if dest in {"", source} or dest in ALLOWED.get(source, frozenset()):
                continue
            if dest in graph or any(m.startswith(f"{PACKAGE}.{dest}") for m in graph):
                found.append(f"{importer} -> {target} ({source} may not import {dest})")
    return found


def test_every_module_is_in_a_layer() -> None:
    layers = {layer_of(module) for module in package_graph()} - {""}
    assert layers <= set(ALLOWED), f"no layering rule for {sorted(layers - set(ALLOWED))}"


def test_imports_flow_one_way() -> None:
    assert violations(package_graph()) == []


@pytest.mark.parametrize(
    ("importer", "imported", "why"),
    [
        # the back-edges that the layering exists to stop
        ("io.store.state_store", "gate.lookup", "io may not import gate"),
        ("model.states", "config.settings", "model may not import config"),
        ("web.factory", "worker.install", "web may not import worker"),
        ("web.receiver", "gate.signals", "web may not import gate"),
        ("admin.service", "worker.step", "admin may not import worker"),
        ("gate.gate", "app.singletons", "gate may not import app"),
    ],
)
def test_a_back_edge_is_found(importer: str, imported: str, why: str) -> None:
    graph = package_graph()
    graph[f"{PACKAGE}.{importer}"].add(f"{PACKAGE}.{imported}")
    assert [v for v in violations(graph) if why in v] == [
        f"{PACKAGE}.{importer} -> {PACKAGE}.{imported} ({why})"
    ]


def test_the_model_doing_io_is_found() -> None:
    graph = package_graph()
    graph[f"{PACKAGE}.model.states"].add("redis")
    assert violations(graph) == [f"{PACKAGE}.model.states -> redis (the model layer does no I/O)"]


def test_relative_imports_are_resolved() -> None:
    found = set(
        imports_of(
            f"{PACKAGE}.io.store.cache",
            "from .state_store import StateStore\nfrom .. import metrics\n",
            is_package=False,
        )
    )
    assert f"{PACKAGE}.io.store.state_store" in found
    assert f"{PACKAGE}.io.metrics" in found
