"""``python -m pyg_grapheme``: LightningCLI (fit / validate / test / predict)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO

from pyg_grapheme.data.formats import DataFormatError
from pyg_grapheme.training.callbacks import AtomicCheckpointIO, LastCheckpoint, TrainingReport
from pyg_grapheme.training.datamodule import GraphemeDataModule
from pyg_grapheme.training.module import GraphemeModule


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read (truncated, corrupt or not a checkpoint)."""


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The contents of a Lightning checkpoint, loaded with ``weights_only=True``.

    Raises:
        CheckpointError: a missing file, a folder, an unreadable, truncated or corrupt file,
            a torch file that is not a Lightning checkpoint, or non-finite parameters.
    """
    name = str(path)
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {name!r} does not exist")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {name!r} is a folder, not a checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as err:
        reason = err.strerror or err
        raise CheckpointError(f"checkpoint {name!r} cannot be read: {reason}") from None
    except Exception as err:  # torch raises many types for a damaged zip/pickle
        raise CheckpointError(
            f"checkpoint {name!r} is corrupt: {type(err).__name__}: {_first_line(err)}"
        ) from None
    if not (isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict)
            and "pytorch-lightning_version" in ckpt):
        raise CheckpointError(
            f"{name!r} is a torch file but not a Lightning checkpoint (no 'state_dict' and "
            "'pytorch-lightning_version'): pass a .ckpt written by `fit`"
        )
    bad = [key for key, value in ckpt["state_dict"].items()
           if isinstance(value, torch.Tensor) and value.is_floating_point()
           and not bool(torch.isfinite(value).all())]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise CheckpointError(
            f"checkpoint {name!r} has NaN or infinite parameters ({', '.join(bad[:3])}{more}): "
            "the run that wrote it diverged; use an earlier checkpoint"
        )
    return ckpt


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


def load_checkpoint(path: str | Path) -> GraphemeModule:
    """Load a trained :class:`GraphemeModule` for prediction (``weights_only=True``)."""
    read_checkpoint(path)
    try:
        module = GraphemeModule.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is not a pyg_grapheme checkpoint: "
            f"{type(err).__name__}: {_first_line(err)}"
        ) from None
    return module.eval()


def check_checkpoint(path: str | Path | None) -> None:
    """Fail before training when ``--ckpt_path`` points at an unreadable file."""
    if path is None or str(path) in {"last", "best", "hpc", "registry"}:
        return
    read_checkpoint(path)


def default_loggers(save_dir: str | os.PathLike) -> list:
    """The loggers of a run without ``trainer.logger`` in its config: CSV (``metrics.csv``,
    always) and TensorBoard when ``tensorboard`` is installed, both in
    ``save_dir/logs/version_N`` (the same ``N``), so that logs, checkpoints, ``curves.png``
    and ``answers.md`` all land under ``--trainer.default_root_dir``."""
    from lightning.fabric.loggers.tensorboard import _TENSORBOARD_AVAILABLE, _TENSORBOARDX_AVAILABLE
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    csv = CSVLogger(save_dir, name="logs")
    if not (_TENSORBOARD_AVAILABLE or _TENSORBOARDX_AVAILABLE):
        return [csv]
    return [csv, TensorBoardLogger(save_dir, name="logs", version=csv.version,
                                   default_hp_metric=False)]


class GraphemeCLI(LightningCLI):
    """LightningCLI with the package's defaults: best (by validation exact match) and last
    checkpoints and the training report. (``--ckpt_path`` is checked in :func:`main`:
    LightningCLI already loads it while it is built, before any ``before_*`` hook.)"""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val_exact_match",
            "checkpoint.mode": "max",
            "checkpoint.filename": "best-{epoch}-{val_exact_match:.3f}",
        })
        # last.ckpt after every epoch and on Ctrl-C / SIGTERM (for resuming).
        parser.add_lightning_class_args(LastCheckpoint, "last_checkpoint")
        parser.add_lightning_class_args(TrainingReport, "report")

    def instantiate_trainer(self, **kwargs):
        config = self._get(self.config_init, "trainer", default={})
        if "logger" not in kwargs and config.get("logger") in (None, True):
            root = config.get("default_root_dir") or os.getcwd()
            kwargs["logger"] = default_loggers(root)
        trainer = super().instantiate_trainer(**kwargs)
        # Checkpoints are written atomically (temporary file, fsync, rename in place).
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer


def predict_texts(ckpt_path: str, texts: list[str]) -> list[str]:
    """Answers of a checkpointed model for ``texts``."""
    return load_checkpoint(ckpt_path).model.generate(texts)


def _ckpt_arg(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--ckpt_path" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--ckpt_path="):
            return arg.split("=", 1)[1]
    return None


def main(argv: list[str] | None = None) -> None:
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        # LightningCLI reads --ckpt_path while it is built: check it first, for a clear error.
        check_checkpoint(_ckpt_arg(argv))
        if argv[:1] == ["predict"] and "--text" in argv:
            # Shortcut: `predict --ckpt_path CKPT --text "..." [--text "..."]` prints answers.
            ckpt, texts = _parse_predict(argv[1:])
            for text, answer in zip(texts, predict_texts(ckpt, texts), strict=True):
                print(f"{text}\t{answer}")
            return
        GraphemeCLI(
            GraphemeModule,
            GraphemeDataModule,
            args=None if from_command_line else argv,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
        )
    except (DataFormatError, CheckpointError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def _parse_predict(args: list[str]) -> tuple[str, list[str]]:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pyg_grapheme predict")
    parser.add_argument("--ckpt_path", required=True)
    parser.add_argument("--text", action="append", required=True)
    ns = parser.parse_args(args)
    return ns.ckpt_path, ns.text
