"""The DAG task through the CLI: a tiny fit of experiments/dag.yaml logs the graph and the
decoded-text exact match once per validation epoch."""

import csv
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "experiments" / "dag.yaml"


def test_dag_config_trains_through_the_cli(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    args = ["fit", "--config", CONFIG, "--trainer.default_root_dir", "out",
            "--trainer.max_epochs", 2, "--trainer.limit_train_batches", 3,
            "--trainer.limit_val_batches", 2, "--trainer.enable_progress_bar", "false",
            "--data.batch_size", 8, "--data.levels", "[1, 2]",
            "--data.sizes", "{1: [24, 8, 8], 2: [24, 8, 8]}",
            "--model.model.hidden", 16, "--model.model.heads", 2]
    proc = subprocess.run([sys.executable, "-m", "pyg_grapheme", *map(str, args)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with open(next((tmp_path / "out").rglob("metrics.csv"))) as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("val_graph_exact_match")]
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    for r in rows:
        for key in ("val_graph_exact_match", "val_dag_text_exact_match",
                    "val_graph_exact_match_level2"):
            assert 0.0 <= float(r[key]) <= 1.0
    config = next((tmp_path / "out").rglob("config.yaml")).read_text()
    assert "pyg_grapheme.training.dag_module.DagDataModule" in config
    assert "decoder: dag" in config
    # predict with the config decodes DAG text (decode_dag; tests/training/
    # test_expression_options.py checks the decoding on a known-perfect prediction)
    ckpt = next((tmp_path / "out").rglob("last.ckpt"))
    question = "a=(* 7 12);(- a a)"
    args = ["predict", "--config", CONFIG, "--ckpt_path", ckpt,
            "--data.init_args.predict_texts", f'["{question}"]',
            "--model.model.hidden", 16, "--model.model.heads", 2,
            "--trainer.enable_progress_bar", "false"]
    proc = subprocess.run([sys.executable, "-m", "pyg_grapheme", *map(str, args)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(question + "\t")]
    assert len(lines) == 1, proc.stdout[-2000:]
