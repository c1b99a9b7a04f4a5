"""Callbacks: ``last.ckpt`` every epoch, atomic checkpoint files, and the training report
(curves as a PNG and the table of decoded answers)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from pyg_grapheme._io import atomic_write_bytes

_CURVES = (
    ("train_loss", "train loss"),
    ("train_segmentation_nll", "train segmentation NLL"),
    ("val_loss", "val loss"),
    ("train_node", "train node term"),
    ("train_edge", "train edge term"),
    ("train_clique", "train clique term"),
)


class AtomicCheckpointIO(TorchCheckpointIO):
    """:class:`TorchCheckpointIO` that writes each checkpoint with :func:`atomic_write_bytes`
    (in the checkpoint's own folder, fsynced, renamed into place): a killed process or a
    full disk never leaves a truncated file under a checkpoint's name."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(path, buffer.getvalue())


class LastCheckpoint(ModelCheckpoint):
    """Write ``last.ckpt`` at the end of every training epoch (after that epoch's
    validation) and when ``fit`` is stopped by Ctrl-C (``KeyboardInterrupt``) or SIGTERM,
    for resuming with ``--ckpt_path``.

    (A plain ``ModelCheckpoint(save_top_k=0, save_last=True)`` writes ``last.ckpt`` only
    in a step where it also saved a top-k checkpoint, so with ``save_top_k=0`` only when
    ``fit`` ends.) The file is always ``last.ckpt`` in ``dirpath`` (no ``-v1``
    versions); ``dirpath=None`` means the logger's ``checkpoints`` folder, as for
    :class:`ModelCheckpoint`.
    """

    def __init__(self, dirpath: str | None = None) -> None:
        super().__init__(dirpath=dirpath, save_top_k=0, save_last=True,
                         enable_version_counter=False)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_validation_end(self, trainer, pl_module) -> None:
        pass  # saved at the end of the training epoch, which comes after its validation

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt | SIGTERMException) and not (
            self._should_skip_saving_checkpoint(trainer)
        ):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class TrainingReport(Callback):
    """Record per-epoch metrics; at the end of ``fit`` write ``curves.png`` (losses, the
    merge threshold, exact match and node counts) and ``answers.md`` (decoded answers vs
    targets of the last validation pass) into the logger's folder, and print the table.

    Args:
        print_table: print the answer table at the end of ``fit``.
        max_rows: rows of the printed table (the file has all of them).
    """

    def __init__(self, print_table: bool = True, max_rows: int = 80) -> None:
        self.print_table = print_table
        self.max_rows = max_rows
        self.history: dict[str, list[tuple[int, float]]] = {}

    def _record(self, trainer: L.Trainer) -> None:
        if trainer.sanity_checking:
            return
        for key, value in trainer.callback_metrics.items():
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                series = self.history.setdefault(key, [])
                if not series or series[-1][0] != trainer.current_epoch:
                    series.append((trainer.current_epoch, float(value)))
                else:
                    series[-1] = (trainer.current_epoch, float(value))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._record(trainer)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._record(trainer)

    def out_dir(self, trainer: L.Trainer) -> Path:
        return Path(trainer.log_dir or trainer.default_root_dir)

    def on_fit_end(self, trainer, pl_module) -> None:
        if trainer.global_rank != 0:
            return
        out = self.out_dir(trainer)
        png = io.BytesIO()
        self.plot(png)
        atomic_write_bytes(out / "curves.png", png.getvalue())
        rows = getattr(pl_module, "examples", [])
        if rows:
            table = answer_table(rows)
            atomic_write_bytes(out / "answers.md", table.encode("utf-8"))
            if self.print_table:
                lines = table.splitlines()
                print("\n".join(lines[: self.max_rows + 2]))
                exact = sum(a == t for _, a, t in rows) / len(rows)
                print(f"\nexact match: {exact:.3f} ({sum(a == t for _, a, t in rows)}/{len(rows)})")
        print(f"curves: {out / 'curves.png'}")

    def plot(self, path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        for key, label in _CURVES:
            if key in self.history:
                e, v = zip(*self.history[key], strict=True)
                axes[0].plot(e, v, label=label)
        axes[0].set_yscale("log")
        axes[0].set_title("loss")
        if "theta" in self.history:
            e, v = zip(*self.history["theta"], strict=True)
            thr = torch.sigmoid(torch.tensor(v)).tolist()
            axes[1].plot(e, v, label="theta")
            axes[1].plot(e, thr, label="sigmoid(theta)")
        for key in ("train_merge_prob", "train_merge_fraction"):
            if key in self.history:
                e, v = zip(*self.history[key], strict=True)
                axes[1].plot(e, v, label=key.removeprefix("train_"))
        axes[1].set_title("merge threshold")
        # Validation thresholds; training forces the count (its error is 0 by construction).
        for key in ("val_exact_match", "val_cer", "val_node_count_error"):
            if key in self.history:
                e, v = zip(*self.history[key], strict=True)
                axes[2].plot(e, v, label=key)
        axes[2].set_title("answers")
        for ax in axes:
            ax.set_xlabel("epoch")
            if ax.lines:
                ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=90)
        plt.close(fig)


def answer_table(rows: list[tuple[str, str, str]]) -> str:
    """Markdown table of (question, answer, target) with a match column."""
    def cell(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", "\\n")

    lines = ["| question | answer | target | ok |", "|---|---|---|---|"]
    lines += [f"| {cell(q)} | {cell(a)} | {cell(t)} | {'yes' if a == t else ''} |"
              for q, a, t in rows]
    return "\n".join(lines) + "\n"
