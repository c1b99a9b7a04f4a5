"""Determinism, resume from a checkpoint, and the DDP run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.training.helpers import epoch_metrics, train

ROOT = Path(__file__).resolve().parents[2]


def test_same_seed_same_losses(tmp_path):
    train(tmp_path / "a", 4)
    train(tmp_path / "b", 4)
    a = epoch_metrics(tmp_path / "a" / "logs" / "version_0")["train_loss"]
    b = epoch_metrics(tmp_path / "b" / "logs" / "version_0")["train_loss"]
    assert a == b and len(a) == 4


def test_resume_gives_the_uninterrupted_curve(tmp_path):
    train(tmp_path / "full", 6)
    train(tmp_path / "part", 3)
    train(tmp_path / "part", 6, ckpt_path=tmp_path / "part" / "ckpt" / "last.ckpt", version=1)
    full = epoch_metrics(tmp_path / "full" / "logs" / "version_0")["train_loss"]
    part = epoch_metrics(tmp_path / "part" / "logs" / "version_0")["train_loss"]
    resumed = epoch_metrics(tmp_path / "part" / "logs" / "version_1")["train_loss"]
    assert sorted(part) == [0, 1, 2] and sorted(resumed) == [3, 4, 5]
    part.update(resumed)
    assert sorted(part) == list(range(6))
    for epoch in range(6):
        assert part[epoch] == pytest.approx(full[epoch], rel=1e-6, abs=1e-7), epoch


def _run_ddp(tmp_path: Path, accelerator: str) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "tests" / "training" / "ddp_script.py"), str(tmp_path),
           accelerator]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]


def _check_ddp(ranks: list[dict]) -> None:
    assert ranks[0]["params"] == ranks[1]["params"]  # same weights after all-reduce
    seen0, seen1 = ranks[0]["seen"], ranks[1]["seen"]
    # DistributedSampler gives each rank ceil(65 / 2) = 33 examples, padding with one
    # repeat: the halves are disjoint but for that single padding example.
    assert len(seen0) == len(seen1) == 33
    assert len(set(seen0) & set(seen1)) <= 1
    assert len(set(seen0) | set(seen1)) == 65
    # training statistics: each rank logs the mean over both ranks' batches, weighted
    # by batch size (log_step_stats sums them across processes once per epoch)
    steps = ranks[0]["steps"] + ranks[1]["steps"]
    for name in ("train_segmentation_nll", "train_node_count_error", "theta", "grad_norm"):
        rows = [(s[name], n) for s, n in steps if name in s]
        want = sum(v * n for v, n in rows) / sum(n for _, n in rows)
        for rank in ranks:
            assert rank["logged"][name] == pytest.approx(want, rel=1e-5), name


def test_ddp_two_cpu_processes(tmp_path):
    _check_ddp(_run_ddp(tmp_path, "cpu"))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_ddp_two_gpus(tmp_path):
    _check_ddp(_run_ddp(tmp_path, "gpu"))
