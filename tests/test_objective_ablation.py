"""experiments/objective_ablation.py: its ``--out`` file (written after every objective,
a failing task recorded), its errors, one real kindergarten run, and the README
rendering of the file (experiments/readme_tables.py)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ab():
    return _load("objective_ablation")


def test_out_is_written_after_every_objective(ab, tmp_path, monkeypatch):
    out = tmp_path / "res" / "ablation.json"
    seen: list[list[str]] = []  # the file's objectives when each task starts

    def kindergarten(kwargs, epochs, root):
        seen.append([e["name"] for e in json.loads(out.read_text())["objectives"]]
                    if out.exists() else [])
        return (70, 1.0, 70) if kwargs.get("ce_weight") else (None, 0.677, epochs)

    def train_graph(data, *, budget_s, module_kwargs, **_):
        if "loss.alpha" in module_kwargs:
            raise RuntimeError("boom")
        return SimpleNamespace(exact={"train": 0.9, "val": 0.8, "test": 0.75}, epochs=12,
                               best_epoch=11, cpu_s=budget_s + 0.4, params=123)

    monkeypatch.setattr(ab, "kindergarten_epochs", kindergarten)
    monkeypatch.setattr(ab, "load_task", lambda *a, **k: None)
    monkeypatch.setattr(ab, "train_graph", train_graph)
    argv = ["--epochs", "300", "--budget-s", "120", "--out", str(out),
            "--objectives", "cross-entropy, forced; structural, learnt"]
    ab.main(argv)
    assert seen == [[], ["cross-entropy, forced"]]  # the first was on disk before the second
    payload = json.loads(out.read_text())
    assert payload["kind"] == "ablation"
    assert payload["command"].endswith(
        "python experiments/objective_ablation.py --epochs 300 --budget-s 120 --out "
        f"{out} --objectives 'cross-entropy, forced; structural, learnt'")
    assert payload["args"]["epochs"] == 300 and payload["args"]["budget_s"] == 120
    ce, st = payload["objectives"]
    assert ce["kwargs"] == ab.OBJECTIVES["cross-entropy, forced"]
    assert ce["kindergarten"]["first_perfect_epoch"] == 70
    assert ce["kindergarten"]["cpu_s"] >= 0
    assert ce["math1"] == {"test_exact": 0.75, "val_exact": 0.8, "train_exact": 0.9,
                           "epochs": 12, "best_epoch": 11, "cpu_s": 120.4, "params": 123}
    assert st["kindergarten"]["first_perfect_epoch"] is None
    assert st["kindergarten"]["best_exact"] == 0.677
    assert st["math1"] == {"error": "RuntimeError: boom"}  # recorded; the run went on

    tables = _load("readme_tables")
    text = tables.RENDERERS["ablation"](payload)
    rows = text.splitlines()
    assert rows[0].startswith("| objective | kindergarten") and "(of 300)" in rows[0]
    assert "120 CPU s" in rows[0]
    assert rows[2] == ("| aligned cross-entropy (weight 10), forced | **70** | "
                       "**0.750 (12 epochs)** |")
    assert rows[3] == ("| `structural_loss`, learnt | never (best 0.677) | "
                       "failed (RuntimeError: boom) |")
    assert text.endswith("```\n" + payload["command"] + "\n```\n")


def test_bad_arguments_are_named(ab, capsys):
    with pytest.raises(SystemExit):
        ab.parse_args(["--objectives", "cross-entropy, forced;CE"])
    assert "unknown objective(s) ['CE']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ab.parse_args(["--tasks", "kindergarten,math9"])
    assert "unknown task(s) ['math9']" in capsys.readouterr().err


def test_kindergarten_runs_for_real(ab, tmp_path):
    # Ten epochs, one validation: no model memorises that fast, so null and a best < 1.
    first, best, epochs = ab.kindergarten_epochs(ab.OBJECTIVES["cross-entropy, forced"], 10,
                                                 tmp_path)
    assert first is None and 0.0 <= best < 1.0 and epochs == 10
