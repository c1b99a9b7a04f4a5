"""Training diagnostics are summed over the epoch and logged once (``log_step_stats``):
the logged values are still the batch-size-weighted epoch means ``self.log(...,
on_epoch=True, batch_size=n)`` gave, on uneven batches, for a stopped epoch too."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from pyg_grapheme.nn import GraphTransformNet
from pyg_grapheme.training import GraphemeDataModule, GraphemeModule
from tests.training.helpers import RecordedModule, epoch_metrics


def _fit(tmp_path, before=None, **trainer_kwargs):
    L.seed_everything(0)
    module = RecordedModule(GraphTransformNet(hidden=32, heads=2, max_answer_length=24))
    if before is not None:
        before(module)
    # 65 pairs in batches of 16: four of 16 and one of 1
    data = GraphemeDataModule("kindergarten", batch_size=16, root=str(tmp_path / "cache"),
                              shuffle=False)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, logger=L.pytorch.loggers.CSVLogger(tmp_path, name="l"),
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, default_root_dir=tmp_path, **trainer_kwargs)
    trainer.fit(module, datamodule=data)
    return trainer, module, epoch_metrics(tmp_path / "l" / "version_0")


def _means(steps, epoch):
    names = {k for e, s, _ in steps if e == epoch for k in s}
    out = {}
    for name in names:
        rows = [(s[name], n) for e, s, n in steps if e == epoch and name in s]
        out[name] = sum(v * n for v, n in rows) / sum(n for _, n in rows)
    return out


def test_epoch_means_weighted_by_batch_size_and_logged_once(tmp_path):
    def stale(module):  # a step run outside the fit must not count in its first epoch
        GraphemeModule.log_step_stats(module, "train", {"theta": torch.tensor(1e3)}, 5)

    trainer, module, logged = _fit(tmp_path, before=stale, max_epochs=2)
    sizes = [n for e, s, n in module.steps if e == 0 and "grad_norm" not in s]
    assert sizes == [16, 16, 16, 16, 1]
    for epoch in (0, 1):
        want = _means(module.steps, epoch)
        assert {"train_segmentation_nll", "train_node_count_error", "theta",
                "grad_norm"} <= set(want)
        for name, value in want.items():
            assert logged[name][epoch] == pytest.approx(value, rel=1e-5), (name, epoch)
    # the unweighted mean differs here (the 1-pair batch), so the weighting is tested
    rows = [s["train_node_count_error"] for e, s, _ in module.steps
            if e == 1 and "train_node_count_error" in s]
    assert sum(rows) / len(rows) != pytest.approx(_means(module.steps, 1)[
        "train_node_count_error"], rel=1e-3)
    # one self.log call per statistic and epoch, the loss's too (no call in a step)
    assert {k: v for k, v in module.log_calls.items() if k != "val_exact_match"} == {
        name: 2 for name in _means(module.steps, 0)}
    assert "train_loss" in want and "train_loss" in trainer.progress_bar_metrics
    assert "train_node_count_error" not in trainer.progress_bar_metrics


def test_an_epoch_stopped_early_logs_the_steps_it_ran(tmp_path):
    trainer, module, logged = _fit(tmp_path, max_steps=2)
    assert [n for _, s, n in module.steps if "grad_norm" not in s] == [16, 16]
    for name, value in _means(module.steps, 0).items():
        assert logged[name][0] == pytest.approx(value, rel=1e-5), name
