"""``python -m pyg_grapheme``: LightningCLI (fit / validate / test / predict)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from pyg_grapheme.data.formats import DataFormatError
from pyg_grapheme.training.callbacks import TrainingReport
from pyg_grapheme.training.datamodule import GraphemeDataModule
from pyg_grapheme.training.module import GraphemeModule


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read (truncated, corrupt or not a checkpoint)."""


def load_checkpoint(path: str | Path) -> GraphemeModule:
    """Load a trained :class:`GraphemeModule` for prediction (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        module = GraphemeModule.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a damaged zip/pickle
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt or not a pyg_grapheme checkpoint: "
            f"{type(err).__name__}: {err}"
        ) from None
    return module.eval()


def check_checkpoint(path: str | Path | None) -> None:
    """Fail before training when ``--ckpt_path`` points at an unreadable file."""
    if path is None or str(path) in {"last", "best", "hpc", "registry"}:
        return
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist") from None
    except Exception as err:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt: {type(err).__name__}: {err}"
        ) from None


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
        # With a monitor, Lightning refreshes last.ckpt only when the best improves; this
        # second callback writes last.ckpt every epoch (for resuming).
        parser.add_lightning_class_args(ModelCheckpoint, "last_checkpoint")
        parser.set_defaults({"last_checkpoint.save_top_k": 0, "last_checkpoint.save_last": True})
        parser.add_lightning_class_args(TrainingReport, "report")


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
