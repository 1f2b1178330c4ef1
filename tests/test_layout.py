"""The package's import structure: no circles, no imports hidden inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import taskflow

ROOT = Path(taskflow.__file__).parent
# The modules on the send and processing paths, where no import may wait
# inside a function (the first call would pay for it, and it hides a circle).
OPTIONAL = ("taskflow.integrations.",)
HOT_PATH = {
    "taskflow",
    "taskflow._flow",
    "taskflow._time",
    "taskflow._transport",
    "taskflow.actor",
    "taskflow.broker",
    "taskflow.composition",
    "taskflow.message",
    "taskflow.worker",
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


def test_no_lazy_import_on_the_send_or_processing_path() -> None:
    modules = _modules()
    hot = {
        name
        for name in modules
        if name in HOT_PATH
        or (name.startswith("taskflow.middleware") and name != "taskflow.middleware")
    }
    lazy = {name: _imports(modules[name], modules)[1] for name in hot}
    # Integrations need their framework (an optional extra): loaded when used.
    needed = {
        name: {m for m in found if not m.startswith(OPTIONAL)} for name, found in lazy.items()
    }
    assert {name: found for name, found in needed.items() if found} == {}


_SETTLING = {"ack", "nack", "dead_letter", "retry", "requeue", "defer"}
# Where messages are settled: the worker's settler, the Delivery methods it
# calls, the hub's intake (bad bytes, before there is a message) and the
# transports themselves.
_SETTLERS = {
    "taskflow.worker": {"_settle"},
    "taskflow._delivery": {"ack", "nack", "retry", "requeue", "defer"},
    "taskflow.broker": {"_accept"},
    "taskflow._transport": {"defer"},
}


def _settling_calls(path: Path) -> list[tuple[str, str]]:
    """(enclosing function, method) of every settling call not made on a context."""
    found = []

    def visit(node: ast.AST, function: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = function
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = child.name
            elif (
                isinstance(child, ast.Call)
                and isinstance(child.func, ast.Attribute)
                and child.func.attr in _SETTLING
                and not (
                    isinstance(child.func.value, ast.Name)
                    and child.func.value.id in ("ctx", "self")
                )
            ):
                found.append((function, child.func.attr))
            visit(child, name)

    visit(ast.parse(path.read_text()), "")
    return found


def test_only_the_settler_and_the_transports_settle_messages() -> None:
    outside = {}
    for name, path in _modules().items():
        if name.startswith("taskflow.brokers."):
            continue
        calls = [
            call for call in _settling_calls(path) if call[0] not in _SETTLERS.get(name, set())
        ]
        if calls:
            outside[name] = calls
    assert outside == {}


def test_no_middleware_imports_another() -> None:
    modules = _modules()
    shared = {"taskflow.middleware", "taskflow.middleware.base", "taskflow.middleware._shared"}
    imports = {
        name: {m for m in _imports(path, modules)[0] if m.startswith("taskflow.middleware")}
        for name, path in modules.items()
        if name.startswith("taskflow.middleware.")
    }
    assert {name: found - shared for name, found in imports.items() if found - shared} == {}
