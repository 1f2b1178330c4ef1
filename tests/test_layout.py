"""The package's import structure: no circles, no imports hidden inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import taskflow

ROOT = Path(taskflow.__file__).parent
# Function-level imports that stay, each for a reason: drivers that are
# optional extras, and the CLI's entry point (loaded only when run).
ALLOWED_LAZY = {
    "taskflow.cli": {"taskflow.cli.app"},
    "taskflow.results": {
        "taskflow.results.redis",
        "taskflow.results.sqlite",
        "taskflow.results.memory",
    },
    "taskflow.brokers.redis._broker": {"taskflow.results.redis"},
    "taskflow.brokers.sqlite._broker": {"taskflow.results.sqlite"},
    "taskflow.brokers.rabbitmq._broker": {"taskflow.middleware"},
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imported(node: ast.Import | ast.ImportFrom, modules: dict[str, Path]) -> set[str]:
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in modules}
    base = node.module or ""
    subs = {f"{base}.{a.name}" for a in node.names} & modules.keys()
    # ``from package import submodule`` needs the submodule, not the whole package.
    return subs or ({base} & modules.keys())


def _imports(path: Path, modules: dict[str, Path]) -> tuple[set[str], set[str]]:
    """(modules imported at import time, modules imported inside functions)."""
    eager: set[str] = set()
    lazy: set[str] = set()

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                (lazy if in_function else eager).update(_imported(child, modules))
            else:
                function = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
                visit(child, in_function or function)

    visit(ast.parse(path.read_text()), False)
    return eager, lazy


def test_no_import_circle() -> None:
    modules = _modules()
    graph = {name: _imports(path, modules)[0] - {name} for name, path in modules.items()}

    def reaches(start: str, goal: str) -> bool:
        seen: set[str] = set()
        todo = list(graph[start])
        while todo:
            name = todo.pop()
            if name == goal:
                return True
            if name not in seen:
                seen.add(name)
                todo.extend(graph[name])
        return False

    circles = sorted(name for name in graph if reaches(name, name))
    assert circles == []


def test_no_lazy_import_outside_the_listed_ones() -> None:
    modules = _modules()
    lazy = {name: _imports(path, modules)[1] for name, path in modules.items()}
    unexpected = {name: found - ALLOWED_LAZY.get(name, set()) for name, found in lazy.items()}
    assert {name: found for name, found in unexpected.items() if found} == {}
