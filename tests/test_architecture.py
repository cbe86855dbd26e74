"""The layering of docs/architecture.md, read from the code's own imports: who may import
whom, and no import cycles between files or packages."""

from __future__ import annotations

import ast
from pathlib import Path

from .helpers import REPO

PACKAGES = ("pipelines", "quality", "linkage_models", "dagster_project")


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Module -> the joinedup modules it imports (at any depth of the file)."""
    modules = {_module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for target in targets:
                if target in modules and target != name:
                    found.add(target)
        graph[name] = found
    return graph


def _package(module: str) -> str:
    return module.split(".")[0]


def test_pipelines_never_imports_the_code_location_or_quality() -> None:
    bad = {
        (m, t)
        for m, targets in _imports().items()
        if _package(m) == "pipelines"
        for t in targets
        if _package(t) in ("dagster_project", "quality")
    }
    assert bad == set()


def test_quality_imports_only_the_engine_api_sql_helpers_contract_and_schema() -> None:
    allowed = (
        "pipelines.engines",
        "pipelines.sql",
        "pipelines.contract",
        "pipelines.disclosure_control",
        "linkage_models.project",
    )
    bad = {
        (m, t)
        for m, targets in _imports().items()
        if _package(m) == "quality"
        for t in targets
        if _package(t) != "quality" and not t.startswith(allowed)
    }
    assert bad == set()


def test_linkage_models_imports_nothing_of_joinedup() -> None:
    bad = {
        (m, t)
        for m, targets in _imports().items()
        if _package(m) == "linkage_models"
        for t in targets
        if _package(t) != "linkage_models"
    }
    assert bad == set()


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph, if there is any."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycles_between_files_or_packages() -> None:
    files = {m: {t for t in ts if t != m} for m, ts in _imports().items()}
    # A package's __init__ importing its own modules is not a cycle of the layering.
    files = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in files.items()}
    assert _cycle(files) is None
    packages: dict[str, set[str]] = {}
    for m, targets in files.items():
        packages.setdefault(_package(m), set()).update(
            _package(t) for t in targets if _package(t) != _package(m)
        )
    assert _cycle(packages) is None


def test_the_checks_can_see_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
