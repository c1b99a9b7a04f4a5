"""The loss package's shape: one idea a module, no import cycle, no hidden imports.

A cycle between two modules is usually hidden by moving one import into a function body;
the AST checks forbid that, and the subprocess check imports every module alone (the
package ``__init__`` bypassed, so it cannot pre-load the others) in a fresh interpreter.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pyg_grapheme.loss

LOSS_DIR = Path(pyg_grapheme.loss.__file__).parent
MODULES = sorted(p.stem for p in LOSS_DIR.glob("*.py") if p.stem != "__init__")
PKG = "pyg_grapheme.loss"


def _imports(tree: ast.AST) -> list[str]:
    """Absolute names of the modules an AST imports (``from a import b`` -> ``a``, and
    ``a.b`` too when ``b`` is a module of this package)."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import"
            out.append(node.module)
            out += [f"{node.module}.{a.name}" for a in node.names
                    if f"{node.module}.{a.name}".removeprefix(PKG + ".") in MODULES]
    return out


def _graph() -> dict[str, set[str]]:
    """Module-level imports among the loss modules: ``{module: {modules it imports}}``."""
    graph = {}
    for name in MODULES:
        tree = ast.parse((LOSS_DIR / f"{name}.py").read_text())
        deps = {m.removeprefix(PKG + ".") for m in _imports(tree) if m.startswith(PKG + ".")}
        graph[name] = deps & set(MODULES)
    return graph


def test_the_split_modules_exist():
    # The layout of ARCHITECTURE.md (loss/), plus quadratic.py for the edge term.
    for name in ("inputs", "costs", "quadratic", "sinkhorn", "fgw", "clique", "structural"):
        assert name in MODULES


def test_no_import_inside_a_function_or_class():
    for name in MODULES:
        tree = ast.parse((LOSS_DIR / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                inner = _imports(node)
                assert not inner, f"loss/{name}.py: {node.name} imports {inner} lazily"


def test_module_imports_form_a_dag_and_stay_inside_the_loss():
    graph = _graph()
    state: dict[str, int] = {}  # 1 = on the DFS stack, 2 = done

    def visit(u: str, path: list[str]) -> None:
        state[u] = 1
        for v in sorted(graph[u]):
            assert state.get(v) != 1, f"import cycle: {' -> '.join(path + [u, v])}"
            if v not in state:
                visit(v, path + [u])
        state[u] = 2

    for u in MODULES:
        if u not in state:
            visit(u, [])
    # The loss knows nothing of the model, the data or Lightning.
    for name in MODULES:
        tree = ast.parse((LOSS_DIR / f"{name}.py").read_text())
        for mod in _imports(tree):
            assert not mod.startswith(("pyg_grapheme.nn", "pyg_grapheme.training",
                                       "pyg_grapheme.data", "lightning")), (name, mod)
    assert graph["inputs"] == set() and "structural" not in graph["clique"]
    assert "structural" not in graph["fgw"] and "fgw" not in graph["quadratic"]


_ALONE = """
import importlib, json, sys, types
import torch, torch_geometric  # third-party, shared by every round
root = sys.argv[1]
loaded = {}
for name in sys.argv[2:]:
    for key in [k for k in sys.modules if k.startswith("pyg_grapheme")]:
        del sys.modules[key]
    # Stub packages: importing pyg_grapheme.loss.X must not run loss/__init__.py,
    # which would load every module first and hide a cycle.
    for pkg, path in (("pyg_grapheme", root), ("pyg_grapheme.loss", root + "/loss")):
        mod = types.ModuleType(pkg)
        mod.__path__ = [path]
        sys.modules[pkg] = mod
    importlib.import_module("pyg_grapheme.loss." + name)
    others = [k for k in sys.modules if k.startswith("pyg_grapheme.loss.")]
    loaded[name] = sorted(k.split(".")[-1] for k in others if k.split(".")[-1] != name)
print(json.dumps(loaded))
"""


def test_each_module_imports_alone_in_a_fresh_interpreter():
    out = subprocess.run(
        [sys.executable, "-c", _ALONE, str(LOSS_DIR.parent), *MODULES],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    graph = _graph()

    def closure(u: str) -> set[str]:
        seen: set[str] = set()
        todo = list(graph[u])
        while todo:
            v = todo.pop()
            if v not in seen:
                seen.add(v)
                todo += graph[v]
        return seen

    # What the interpreter loaded is exactly what the module-level imports say.
    for name in MODULES:
        assert set(loaded[name]) == closure(name), name
