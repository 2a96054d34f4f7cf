"""The package's import graph: no cycles, and every stage imports only from the stages below it.

Read with ``ast`` from the source files (lazy imports inside functions included), so the
check needs no heavy import and a hidden cycle cannot slip through a function body.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ff_keras"
# Pipeline stages, lowest first: a module may import its own stage and the ones before it.
# "core" holds the contracts every stage shares (config, label schema, sidecar, paths).
STAGES: tuple[str, ...] = (
    "core", "data", "splits", "models", "convert", "training", "inference", "evaluation", "faces", "serve",
    "api", "annotate", "cli",
)
CORE = {"ff_keras.config", "ff_keras.labels", "ff_keras.machine", "ff_keras.model_info", "ff_keras.paths",
        "ff_keras.version"}
# The package's own namespace exposes the API (``ff_keras.analyze``); ``python -m ff_keras`` is the CLI.
TOP = {"ff_keras": "api", "ff_keras.__main__": "cli"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """ff_keras modules that ``path`` imports (``from pkg import submodule`` -> the submodule)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                     for a in node.names]
        else:
            continue
        for name in names:
            if name == "ff_keras" or name.startswith("ff_keras."):
                while name not in known:  # ``import ff_keras.x.y`` where y is not a module
                    name = name.rpartition(".")[0]
                found.add(name)
    return found


def stage_of(module: str) -> str:
    if module in CORE:
        return "core"
    if module in TOP:
        return TOP[module]
    stage = module.split(".")[1]
    if stage not in STAGES:
        raise AssertionError(f"{module} is in no stage of {STAGES}: add its folder to STAGES")
    return stage


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = package_modules()
    known = set(modules)
    return {m: imported_modules(p, known) - {m} for m, p in modules.items()}


def test_every_module_belongs_to_a_stage(graph):
    for module in graph:
        stage_of(module)


def test_no_import_from_a_higher_stage(graph):
    upward = [
        f"{m} ({stage_of(m)}) imports {d} ({stage_of(d)})"
        for m, deps in graph.items()
        for d in sorted(deps)
        if STAGES.index(stage_of(d)) > STAGES.index(stage_of(m))
    ]
    assert not upward, "imports from a higher stage:\n" + "\n".join(upward)


def test_no_import_cycles(graph):
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(path[path.index(dep):] + [node, dep]) if dep in path else f"{node} -> {dep}")
            elif dep not in state:
                visit(dep, [*path, node])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checks_see_real_edges(graph):
    """The graph is not trivially empty: known edges of the data flow are found."""
    assert "ff_keras.data.preprocess" in graph["ff_keras.inference.predictor"]
    assert "ff_keras.models.multihead" in graph["ff_keras.convert.pretrained"]
    assert "ff_keras.inference.predictor" in graph["ff_keras.serve.app"]
