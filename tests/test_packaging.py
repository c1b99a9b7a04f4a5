"""Packaging tells the truth (issue 15 item 6): the package imports only what it declares,
the torch pin lives once for the Makefile and environment.yml, and importing the package
changes no global state."""

from __future__ import annotations

import ast
import configparser
import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _requirements(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        if line:
            names.add(Requirement(line).name.lower().replace("_", "-"))
    return names


def _imports() -> tuple[set[str], set[str]]:
    """Third-party top-level modules the package imports at module level, and inside
    functions (optional paths)."""
    top, inner = set(), set()
    for path in (ROOT / "pyg_grapheme").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                root = name.split(".")[0]
                if root not in sys.stdlib_module_names and root != "pyg_grapheme":
                    (top if node.col_offset == 0 else inner).add(root)
    return top, inner


def _distribution(module: str) -> str:
    dists = importlib.metadata.packages_distributions().get(module)
    assert dists, f"{module} belongs to no installed distribution"
    return dists[0].lower().replace("_", "-")


def test_runtime_imports_are_declared():
    """A module the package imports is in ``install_requires`` (its runtime), or, when
    imported only inside a function, in an extra (scipy: ``components="scipy"``)."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    required = _requirements(cfg["options"]["install_requires"])
    extras = set().union(*(_requirements(v) for v in cfg["options.extras_require"].values()))
    top, inner = _imports()
    assert {"torch", "torch_geometric", "lightning"} <= top
    missing = sorted(m for m in top if _distribution(m) not in required)
    assert not missing, f"imported at module level but not in install_requires: {missing}"
    undeclared = sorted(m for m in inner if _distribution(m) not in required | extras)
    assert not undeclared, f"imported but declared nowhere: {undeclared}"
    # POT is the tests' oracle only: the package never imports it
    assert "ot" not in top | inner and "pot" not in required


def test_the_torch_pin_is_the_makefiles():
    """environment.yml installs the torch the Makefile pins (TORCH ?= ...)."""
    make = re.search(r"^TORCH \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    env = re.findall(r"^\s*- (torch\S*)", (ROOT / "environment.yml").read_text(), re.M)
    assert make and env == [make[1]], (make, env)
    # the rest of environment.yml's versions come from setup.cfg
    assert "-e .[test]" in (ROOT / "environment.yml").read_text()


def test_the_torch_floor_has_what_the_package_calls():
    """``torch>=2.4``: the package calls ``torch.serialization.add_safe_globals`` (2.4)."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    torch_req = next(Requirement(r) for r in cfg["options"]["install_requires"].splitlines()
                     if r.strip().startswith("torch>"))
    assert str(torch_req.specifier) == ">=2.4"
    source = "".join(p.read_text() for p in (ROOT / "pyg_grapheme").rglob("*.py"))
    assert "add_safe_globals" in source


_PROBE = """
import atexit, json, os, sys, warnings
import torch, torch_geometric
before = {"safe": sorted(map(str, torch.serialization.get_safe_globals())),
          "atexit": atexit._ncallbacks(), "threads": torch.get_num_threads(),
          "dtype": str(torch.get_default_dtype()), "files": sorted(os.listdir("."))}
import pyg_grapheme, pyg_grapheme.data, pyg_grapheme.nn, pyg_grapheme.loss
after = {"safe": sorted(map(str, torch.serialization.get_safe_globals())),
         "atexit": atexit._ncallbacks(), "threads": torch.get_num_threads(),
         "dtype": str(torch.get_default_dtype()), "files": sorted(os.listdir("."))}
from pyg_grapheme.data import TextPairDataset
ds = TextPairDataset("cache", sys.argv[1], log=False)  # builds, then loads the cache
loaded = [str(g) for g in torch.serialization.get_safe_globals() if "PairData" in str(g)]
print(json.dumps({"before": before, "after": after, "loaded": loaded, "n": len(ds)}))
"""


def test_importing_the_package_changes_no_global_state(tmp_path):
    """Import registers no safe globals, no exit hooks, writes no files, sets no torch
    threads or dtype; a dataset allows ``PairData`` for its own load."""
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"input": "a", "target": "b"}\n{"input": "cd", "target": "e"}\n')
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _PROBE, str(pairs)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert probe["after"] == probe["before"]
    assert probe["loaded"] and probe["n"] == 2
