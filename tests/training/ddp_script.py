"""Train 2 epochs with DDP on 2 processes; each rank writes its parameters' checksum, the
examples it saw, its last epoch's training statistics per step and the epoch means it
logged (run by tests/training/test_reproducibility.py)."""

import hashlib
import json
import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from pyg_grapheme.data import graphs_to_texts, split_pair_batch
from pyg_grapheme.nn import GraphTransformNet
from pyg_grapheme.training import GraphemeDataModule
from tests.training.helpers import RecordedModule


class Record(Callback):
    def __init__(self):
        self.seen = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.current_epoch == 0:
            self.seen += graphs_to_texts(split_pair_batch(batch)[0])


def main(out: Path, accelerator: str) -> None:
    torch.set_num_threads(1)
    L.seed_everything(0, workers=True)
    record = Record()
    trainer = L.Trainer(
        accelerator=accelerator, devices=2, strategy="ddp", max_epochs=2, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[record], limit_val_batches=0, default_root_dir=out, gradient_clip_val=0.25,
    )
    module = RecordedModule(GraphTransformNet(hidden=32, heads=2))
    data = GraphemeDataModule("kindergarten", batch_size=8, root=str(out / "cache"))
    trainer.fit(module, datamodule=data)
    params = torch.cat([p.detach().flatten().cpu() for p in module.parameters()])
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps({
        "params": hashlib.sha256(params.numpy().tobytes()).hexdigest(),
        "seen": record.seen,
        "steps": [(stats, n) for epoch, stats, n in module.steps if epoch == 1],
        "logged": {k: float(v) for k, v in trainer.callback_metrics.items()},
    }))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
