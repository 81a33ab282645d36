"""The import graph of ``mm``: no circles (lazy imports inside functions included), and no module
but the experiment runner imports the training loop."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
           for p in sorted((ROOT / "mm").rglob("*.py"))}


def imports_of(name: str, path: Path) -> set[str]:
    """The ``mm`` modules a module imports anywhere in its body (functions too)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from mm.data import manifest`
    # A module's own package (and its ancestors) are imported first by Python itself: not an edge.
    ancestors = {name.rsplit(".", k)[0] for k in range(1, name.count(".") + 1)}
    return {m for m in found if m in MODULES and m != name and m not in ancestors}


GRAPH = {name: imports_of(name, path) for name, path in MODULES.items()}


def test_the_import_graph_has_no_circles():
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])


def test_only_the_experiment_runner_imports_the_training_loop():
    users = sorted(n for n, deps in GRAPH.items() if "mm.train" in deps)
    assert users and all(u.startswith("mm.experiments") for u in users), users


def test_every_module_imports_alone_in_a_fresh_interpreter():
    # One interpreter per module would cost a torch import each: import them all in dependency
    # order in one fresh interpreter instead, leaves first, each as the first of its dependants.
    order, seen = [], set()

    def visit(node: str) -> None:
        if node in seen:
            return
        seen.add(node)
        for nxt in sorted(GRAPH[node]):
            visit(nxt)
        order.append(node)

    for name in sorted(GRAPH):
        visit(name)
    code = f"import importlib\nfor m in {order!r}:\n    importlib.import_module(m)\n"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
