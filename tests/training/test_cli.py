"""The command line: fit/predict end to end, and bad input stopping before training."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def cli(*args, cwd):
    # PYTHONPATH: the package of this checkout, not whichever one is installed.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "pyg_grapheme", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600, env=env)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One short fit with ``--trainer.default_root_dir out`` (run from ``tmp``)."""
    tmp = tmp_path_factory.mktemp("cli")
    rc, out, err = cli("fit", "--config", ROOT / "experiments" / "kindergarten.yaml",
                       "--trainer.max_epochs", 3, "--trainer.check_val_every_n_epoch", 1,
                       "--trainer.default_root_dir", "out", "--data.root", "cache",
                       "--model.hidden", 32, "--model.heads", 2, cwd=tmp)
    assert rc == 0, err[-3000:]
    return tmp / "out", out


def test_fit_writes_logs_checkpoints_plot_and_table(fitted):
    tmp, out = fitted
    metrics = next(tmp.rglob("metrics.csv")).read_text().splitlines()
    header = metrics[0].split(",")
    assert any("train" in h and "loss" in h for h in header)
    ckpts = {p.name for p in tmp.rglob("*.ckpt")}
    assert "last.ckpt" in ckpts and any(n.startswith("best") for n in ckpts)
    png = next(tmp.rglob("curves.png"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| question | answer | target |" in out and "exact match:" in out


def test_default_root_dir_holds_everything(fitted):
    """Logs, checkpoints, plot, answer table and config all land under
    ``--trainer.default_root_dir`` (the YAML's ``runs/kindergarten`` is not used)."""
    root, _ = fitted
    cwd = root.parent
    assert sorted(p.name for p in cwd.iterdir()) == ["cache", "out"]
    version = root / "logs" / "version_0"
    for name in ("metrics.csv", "curves.png", "answers.md", "config.yaml",
                 "checkpoints/last.ckpt"):
        assert (version / name).is_file(), name
    assert {p.parent for p in root.rglob("*.ckpt")} == {version / "checkpoints"}


def test_predict_prints_answers(fitted):
    tmp, _ = fitted
    ckpt = next(tmp.rglob("last.ckpt"))
    rc, out, err = cli("predict", "--ckpt_path", ckpt, "--text", "What colour is snow?",
                       "--text", "caf\u00e9?", cwd=tmp)
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == ["What colour is snow?", "caf\u00e9?"]


def test_corrupt_checkpoint_is_a_clear_error(fitted):
    tmp, _ = fitted
    bad = tmp / "bad.ckpt"
    bad.write_bytes(next(tmp.rglob("last.ckpt")).read_bytes()[:1000])  # truncated
    rc, _, err = cli("predict", "--ckpt_path", bad, "--text", "hi", cwd=tmp)
    assert rc == 2 and "corrupt" in err and "Traceback" not in err
    rc, _, err = cli("fit", "--config", ROOT / "experiments" / "kindergarten.yaml",
                     "--ckpt_path", bad, "--data.root", tmp / "cache", cwd=tmp)
    assert rc == 2 and "corrupt" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data.train_file", "no/such/file.jsonl"], "neither a file nor a dataset name"),
        (["--data.train_file", "math9"], "neither a file nor a dataset name"),
        (["--data.train_file", "{bad}"], "bad.jsonl:2"),
        (["--model.no_such_option", "1"], "no_such_option"),
    ],
)
def test_bad_input_stops_before_training(tmp_path, args, message):
    (tmp_path / "bad.jsonl").write_text('{"input": "a", "target": "b"}\n{"input": 3}\n')
    args = [a.replace("{bad}", str(tmp_path / "bad.jsonl")) for a in args]
    rc, out, err = cli("fit", "--config", ROOT / "experiments" / "kindergarten.yaml",
                       "--trainer.default_root_dir", tmp_path, "--data.root",
                       tmp_path / "cache", *args, cwd=tmp_path)
    assert rc != 0 and message in err, err[-2000:]
    assert "Traceback" not in err
    assert not list(tmp_path.rglob("*.ckpt"))  # nothing trained
