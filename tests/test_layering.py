"""The layering, read from the source (imports inside functions included): no import cycles;
`edgec.core` imports no other part of edgec; the runtime none of the compiler's parts (it is
what runs on a device)."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {
    "edgec": "edgec",
    "core": "edgec.core",
    "frontend": "edgec.frontend",
    "passes": "edgec.passes",
    "targets": "edgec.targets",
    "runtime": "edgec.runtime",
    "models": "edgec.models",
}


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).glob("*.py")):
            found[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return found


@functools.cache
def imports() -> dict[str, set[str]]:
    """Each module's edgec imports (a `from P import name` of a submodule counts as it)."""
    mods = modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("edgec"):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    deps.add(sub if sub in mods else str(node.module))
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("edgec")}
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def cycle_from(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """A path start -> ... -> start, if there is one."""
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for dep in sorted(graph[node]):
            if dep == start:
                return [*path, start]
            if dep not in seen:
                seen.add(dep)
                stack.append((dep, [*path, dep]))
    return None


def test_the_scan_sees_the_imports() -> None:
    graph = imports()
    assert "edgec.core.errors" in graph["edgec.runtime.bundle"]
    assert "edgec.passes.rules" in graph["edgec.passes.fold_batchnorm"]


@pytest.mark.parametrize("module", sorted(imports()))
def test_no_import_cycle(module: str) -> None:
    assert cycle_from(imports(), module) is None


def test_core_is_the_bottom_and_the_runtime_needs_no_compiler() -> None:
    graph = imports()
    for name, deps in graph.items():
        if name.startswith("edgec.core"):
            assert all(d.startswith("edgec.core") for d in deps), (name, deps)
        if name.startswith("edgec.runtime"):
            compiler = ("edgec.frontend", "edgec.passes", "edgec.targets", "edgec.models")
            assert not [d for d in deps if d.startswith(compiler)], (name, deps)
