"""The import graph of ``mm``: no circles (lazy imports inside functions and parent packages'
``__init__`` included), the configuration below every implementation, no module but the experiment
runner importing the training loop, and every module importable alone."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
           for p in sorted((ROOT / "mm").rglob("*.py"))}


def ancestors(name: str) -> set[str]:
    """The packages above a module: ``mm.data.media`` -> ``{mm.data, mm}``."""
    return {name.rsplit(".", k)[0] for k in range(1, name.count(".") + 1)}


def imports_of(name: str, path: Path) -> set[str]:
    """The ``mm`` modules a module imports anywhere in its body (functions too), and the packages
    whose ``__init__`` Python runs first for them: importing ``mm.data.synthetic_tasks`` runs
    ``mm/data/__init__.py`` before it, so that package is an edge too."""
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
    found |= {parent for m in found for parent in ancestors(m)}
    # A module's own package (and its ancestors) are being imported already when it runs: not an edge.
    return {m for m in found if m in MODULES and m != name and m not in ancestors(name)}


GRAPH = {name: imports_of(name, path) for name, path in MODULES.items()}


def circle(graph: dict[str, set[str]]) -> list[str] | None:
    """The first import circle of a graph (depth first, in sorted order), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt, [*path, nxt])):
                return found
        state[node] = 2
        return None

    for name in sorted(graph):
        if name not in state and (found := visit(name, [name])):
            return found
    return None


def test_the_import_graph_has_no_circles():
    found = circle(GRAPH)
    assert found is None, "import circle: " + " -> ".join(found)


def test_the_circle_check_sees_parent_packages():
    # The circle the issue found: mm.config -> mm.data.synthetic_tasks, whose package __init__ imported
    # mm.config. Without the parent-package edge it is invisible.
    graph = {"mm": set(), "mm.config": set(), "mm.data": {"mm.config"}, "mm.data.synthetic_tasks": set()}
    assert circle(graph) is None
    graph["mm.config"] = {"mm.data.synthetic_tasks", "mm.data"}  # what imports_of gives for that import
    assert circle(graph) == ["mm.config", "mm.data", "mm.config"]


def test_the_configuration_sits_below_every_implementation():
    # mm.registry imports no mm module; mm.config only the registry; no data module imports config's
    # schema holders back up (mm.data's package no longer imports mm.config).
    assert GRAPH["mm.registry"] == set()
    assert GRAPH["mm.config"] == {"mm.registry"}
    assert "mm.config" not in GRAPH["mm.data"]


def test_only_the_experiment_runner_imports_the_training_loop():
    users = sorted(n for n, deps in GRAPH.items() if "mm.train" in deps)
    assert users and all(u.startswith("mm.experiments") for u in users), users


# Each child imports one mm module into an interpreter where no mm module is loaded yet. The
# parent has imported the third-party libraries mm uses at module level (torch, transformers,
# timm, ...), so each fork costs milliseconds instead of a torch import.
FORK_IMPORTS = r"""
import importlib, json, os, sys, traceback
modules, third_party = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for lib, names in third_party:
    try:
        module = importlib.import_module(lib)
        for attr in names:  # `from transformers import AutoModel`: load what lazy packages defer
            getattr(module, attr, None)
    except Exception:
        pass
assert not [m for m in sys.modules if m == "mm" or m.startswith("mm.")], "the parent must not import mm"
failed = {}
for name in modules:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            importlib.import_module(name)
            message = ""
        except BaseException:
            message = traceback.format_exc()[-1500:]
        os.write(write, message.encode())
        os._exit(0)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 65536):
        chunks.append(chunk)
    os.close(read)
    _, status = os.waitpid(pid, 0)
    message = b"".join(chunks).decode()
    if message or status:
        failed[name] = message or f"exit status {status}"
print(json.dumps(failed))
"""


def third_party_imports() -> list[tuple[str, list[str]]]:
    """What mm's modules import from other packages at module level: ``(module, [names])``."""
    found: dict[str, set[str]] = {}
    for path in MODULES.values():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                for a in node.names:
                    found.setdefault(a.name, set())
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                found.setdefault(node.module, set()).update(a.name for a in node.names)
    return sorted((m, sorted(names)) for m, names in found.items() if m.split(".")[0] not in ("mm", "__future__"))


def test_every_module_imports_alone():
    # Two forking parents (2 cores), each importing half of the modules one per child.
    names, libs = sorted(MODULES), third_party_imports()
    halves = [names[0::2], names[1::2]]

    def run(half: list[str]) -> dict[str, str]:
        proc = subprocess.run([sys.executable, "-c", FORK_IMPORTS, json.dumps(half), json.dumps(libs)],
                              cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    with ThreadPoolExecutor(2) as pool:
        failed = {k: v for result in pool.map(run, halves) for k, v in result.items()}
    assert not failed, "\n".join(f"{k}:\n{v}" for k, v in failed.items())


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODULES))
def test_a_module_imports_alone_in_a_fresh_interpreter(name):
    # Slower and stricter than the forked check: no library loaded beforehand either.
    proc = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
