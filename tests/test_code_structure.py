"""The shape of the code, checked on its source: the serving runtime stands alone (a served
model carries only ``cycada``, ``cycada.models`` and ``cycada.serving``), no two modules import
each other, even through imports inside functions, and no product function is over 80 lines."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the folders of the product and the packages they are installed as (pyproject.toml)
PACKAGES = {
    "cycada": "cycada",
    "training": "cycada.training",
    "export": "cycada.export",
    "serving": "cycada.serving",
    "clients": "cycada.clients",
    "benchmarks": "cycada.benchmarks",
}
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    modules = {}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


MODULES = _modules()


def _imports(path: Path) -> Iterator[tuple[str, int]]:
    """(module, line) of every cycada module ``path`` imports, at the top or in a function;
    imports for type checking only are left out."""
    tree = ast.parse(path.read_text())
    type_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for node in ast.walk(block)
    }
    for node in ast.walk(tree):
        if id(node) in type_only or not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            module = node.module or ""
            names = [module, *(f"{module}.{alias.name}" for alias in node.names)]
        for name in names:
            if name in MODULES:
                yield name, node.lineno


def test_the_serving_runtime_imports_nothing_from_export_training_or_the_clients():
    standalone = ("cycada.serving", "cycada.models")
    others = ("cycada.export", "cycada.training", "cycada.clients", "cycada.benchmarks")
    found = [
        f"{MODULES[module].relative_to(ROOT)}:{line} imports {name}"
        for module in MODULES
        if module.startswith(standalone)
        for name, line in _imports(MODULES[module])
        if name.startswith(others)
    ]
    assert not found, found


def test_no_two_modules_import_each_other():
    graph = {
        module: {name for name, _ in _imports(path)} - {module} for module, path in MODULES.items()
    }
    loops = []

    def visit(module: str, trail: list[str], done: set[str]) -> None:
        for name in sorted(graph[module]):
            if name in trail:
                loops.append(trail[trail.index(name) :] + [name])
            elif name not in done:
                visit(name, [*trail, name], done)
        done.add(module)

    done: set[str] = set()
    for module in sorted(graph):
        if module not in done:
            visit(module, [module], done)
    assert not loops, " ; ".join(" → ".join(loop) for loop in loops)


def test_no_product_function_is_over_80_lines():
    long = [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1})"
        for path in MODULES.values()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, long
