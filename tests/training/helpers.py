"""Shared helpers for the training tests: a small Trainer run and its CSV metrics."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from pyg_grapheme.nn import GraphTransformNet
from pyg_grapheme.training import GraphemeDataModule, GraphemeModule


class RecordedModule(GraphemeModule):
    """GraphemeModule that records every training step's statistics as ``(epoch, {name:
    value}, batch_size)`` in ``steps`` and counts its ``self.log`` calls by name."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.steps: list[tuple[int, dict[str, float], int]] = []
        self.log_calls: dict[str, int] = {}

    def log_step_stats(self, stage, stats, batch_size, **kwargs):
        if stage == "train":
            self.steps.append((self.current_epoch,
                               {k: float(v.detach()) for k, v in stats.items()}, batch_size))
        super().log_step_stats(stage, stats, batch_size, **kwargs)

    def log(self, name, *args, **kwargs):
        self.log_calls[name] = self.log_calls.get(name, 0) + 1
        super().log(name, *args, **kwargs)


def train(tmp: Path, epochs: int, *, seed: int = 0, ckpt_path=None, val_every: int = 1,
          version: int = 0, net_kwargs=None,
          module_kwargs=None, data_kwargs=None, callbacks=(), **trainer_kwargs):
    """Fit ``GraphemeModule(GraphTransformNet(**net_kwargs), **module_kwargs)`` with the
    shipped configs' clipping (0.25)."""
    L.seed_everything(seed, workers=True)
    module = GraphemeModule(GraphTransformNet(**(net_kwargs or {})), **(module_kwargs or {}))
    data = GraphemeDataModule(
        **{"train_file": "kindergarten", "batch_size": 128, "root": str(tmp / "cache"),
           "shuffle": False, **(data_kwargs or {})}
    )
    best = ModelCheckpoint(dirpath=tmp / "ckpt", monitor="val_exact_match", mode="max")
    # With a monitor, last.ckpt is only refreshed when the best improves: a second
    # callback writes it every epoch.
    last = ModelCheckpoint(dirpath=tmp / "ckpt", save_top_k=0, save_last=True)
    trainer = L.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, deterministic=True,
        logger=CSVLogger(tmp, name="logs", version=version), callbacks=[best, last, *callbacks],
        enable_progress_bar=False, enable_model_summary=False,
        check_val_every_n_epoch=val_every, num_sanity_val_steps=0, default_root_dir=tmp,
        **{"gradient_clip_val": 0.25, **trainer_kwargs},
    )
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return trainer, module


def epoch_metrics(log_dir: Path) -> dict[str, dict[int, float]]:
    """metric -> {epoch: value} from a CSVLogger's metrics.csv."""
    out: dict[str, dict[int, float]] = {}
    with open(log_dir / "metrics.csv") as fh:
        for row in csv.DictReader(fh):
            for key, value in row.items():
                if key not in ("epoch", "step") and value not in ("", None):
                    out.setdefault(key, {})[int(row["epoch"])] = float(value)
    return out
