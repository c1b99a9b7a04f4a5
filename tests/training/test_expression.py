"""The expression task through the CLI: a tiny fit logs val_graph_exact_match; the
accuracy goal (slow)."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "experiments" / "expression.yaml"


def cli(*args, cwd, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "pyg_grapheme", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=env)
    return proc.returncode, proc.stdout, proc.stderr


def _rows(root: Path) -> list[dict]:
    with open(next(root.rglob("metrics.csv"))) as fh:
        return list(csv.DictReader(fh))


def test_expression_config_trains_through_the_cli(tmp_path):
    rc, _, err = cli("fit", "--config", CONFIG, "--trainer.default_root_dir", "out",
                     "--trainer.max_epochs", 2, "--trainer.limit_train_batches", 3,
                     "--trainer.limit_val_batches", 2, "--trainer.enable_progress_bar", "false",
                     "--data.batch_size", 8, "--data.sizes", "{1: [24, 8, 8], 2: [24, 8, 8]}",
                     "--model.hidden", 16, "--model.heads", 2,
                     cwd=tmp_path)
    assert rc == 0, err[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # default_root_dir decides
    rows = [r for r in _rows(tmp_path / "out") if r.get("val_graph_exact_match")]
    assert [int(r["epoch"]) for r in rows] == [0, 1]  # once per validation epoch
    for r in rows:
        assert 0.0 <= float(r["val_graph_exact_match"]) <= 1.0
        assert r["val_text_exact_match"] != ""
    config = next((tmp_path / "out").rglob("config.yaml")).read_text()
    assert "pyg_grapheme.training.ExpressionModule" in config


@pytest.mark.slow
def test_expression_goal_on_held_out_levels(tmp_path):
    """The full config: >= 0.95 graph exact match on level 1 and level 2 validation."""
    rc, _, err = cli("fit", "--config", CONFIG, "--trainer.default_root_dir", "out",
                     "--trainer.enable_progress_bar", "false", cwd=tmp_path, timeout=1200)
    assert rc == 0, err[-3000:]
    rows = [r for r in _rows(tmp_path / "out") if r.get("val_graph_exact_match_level2")]
    best = max(rows, key=lambda r: float(r["val_graph_exact_match"]))
    assert float(best["val_graph_exact_match_level1"]) >= 0.95
    assert float(best["val_graph_exact_match_level2"]) >= 0.95
