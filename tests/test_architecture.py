"""The package's layering stays true: no import cycles, no upward imports, small modules.

Imports are read from the source (AST), including imports inside functions;
only ``if TYPE_CHECKING:`` blocks are exempt. See ARCHITECTURE.md for the layers.
"""
from __future__ import annotations

import ast
import pathlib
from typing import Dict, List, Set

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "dserve"

# bottom to top; a module may import from its own layer or any layer below
LAYERS: List[List[str]] = [
    ["dserve._version", "dserve.exceptions", "dserve.config", "dserve.schema", "dserve.spec", "dserve.wire",
     "dserve.types", "dserve.context", "dserve.serialization", "dserve.event_loop", "dserve.autoscale",
     "dserve.uvicorn_server", "dserve.http_protocol", "dserve.timers", "dserve.grpc_util", "dserve.auth", "dserve.metrics", "dserve.logs",
     "dserve.status_schema", "dserve.status_view", "dserve.validation", "dserve.autoscaling_policy", "dserve.gang",
     "dserve.chained"],
    ["dserve.routing", "dserve.runtime"],
    ["dserve.handle", "dserve.responses", "dserve.deployment", "dserve.ingress", "dserve.batching", "dserve.multiplex", "dserve.build",
     "dserve.dask_map"],
    ["dserve.actors"],
    ["dserve.proxy"],
    ["dserve.controller", "dserve.rest", "dserve.dashboard"],
    ["dserve.api", "dserve.local_testing", "dserve.cli", "dserve.cli.local", "dserve.cli.run", "dserve.cli.admin",
     "dserve.cli.build_config", "dserve.cli.configs", "dserve.cli.progress", "dserve.cli.render",
     "dserve.cli.rest_client", "dserve.launcher", "dserve.preload", "dserve.cluster", "dserve"],
]
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 250


def _modules() -> Dict[str, pathlib.Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _layer(module: str) -> int:
    best, level = -1, -1
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, level = len(name), i
    return level


def _type_checking_nodes(tree: ast.AST) -> Set[int]:
    skip: Set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    return skip


def _imports(module: str, path: pathlib.Path) -> Set[str]:
    tree = ast.parse(path.read_text())
    skip = _type_checking_nodes(tree)
    is_package = path.name == "__init__.py"
    found: Set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = module.split(".") if is_package else module.split(".")[:-1]
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # ``from . import x`` runs the package's __init__ too: it counts as importing the package
            targets = [base] + [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != module:
                found.add(target)
    return found


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def test_every_module_has_a_layer() -> None:
    assert [m for m in MODULES if _layer(m) < 0] == []


def test_no_upward_imports() -> None:
    upward = sorted(f"{m} (layer {_layer(m) + 1}) imports {t} (layer {_layer(t) + 1})"
                    for m, targets in GRAPH.items() for t in targets if _layer(t) > _layer(m))
    assert upward == []


def test_no_import_cycles() -> None:
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    cycles: List[List[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in GRAPH:
        if module not in index:
            visit(module)
    assert cycles == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_is_small_and_documented(module: str) -> None:
    path = MODULES[module]
    source = path.read_text()
    tree = ast.parse(source)
    assert len(source.splitlines()) <= MAX_MODULE_LINES
    assert ast.get_docstring(tree), f"{module} has no module docstring saying its role"
    big = [f"{node.name}: {node.end_lineno - node.lineno + 1} lines" for node in ast.walk(tree)
           if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES]
    assert big == []


def test_py_typed_ships() -> None:
    assert (PACKAGE / "py.typed").exists()
