"""``python -m pyg_grapheme``: LightningCLI (fit / validate / test / predict)."""

from __future__ import annotations

import contextlib
import errno
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from jsonargparse import Namespace
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO

from pyg_grapheme.training.base import INJECTED
from pyg_grapheme.training.callbacks import (
    AtomicCheckpointIO,
    LastCheckpoint,
    TrainingReport,
    atomic_write_bytes,
)
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


def default_loggers(save_dir: str | Path) -> list:
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


def _import(path: str | None) -> Any:
    if not path:
        return None
    module, _, name = path.rpartition(".")
    with contextlib.suppress(ImportError, AttributeError, ValueError):
        return getattr(importlib.import_module(module), name)
    return None


class UsageError(ValueError):
    """A command line that would run, but not as asked (reported as one ``error:`` line)."""


#: Network arguments that change no parameter shape: a checkpoint's weights still load
#: when they differ. Every other ``model.*`` argument (and ``model.class_path``) does.
NON_SHAPE_ARGS = ("dropout", "max_input_length", "pool_threshold", "pool_tau")
#: Arguments whose effect a resumed ``fit`` takes from the checkpoint (the optimizer and
#: scheduler states are restored), so a new value would be ignored.
OPTIMIZER_ARGS = ("optimizer", "lr_scheduler")


def flat_args(config: Any, prefix: str = "") -> dict[str, Any]:
    """A model section (or checkpoint hyperparameters) as ``{"model.hidden": 16,
    "optimizer.lr": 0.01, "ce_weight": 2.0, ...}``: nested ``class_path`` configs joined
    with dots, their ``init_args`` / ``dict_kwargs`` levels and private keys dropped."""
    if isinstance(config, Namespace):
        config = config.as_dict()
    out: dict[str, Any] = {}
    for key, value in (config or {}).items():
        if key.startswith("_") or (not prefix and key == "class_path"):
            continue
        if key in ("init_args", "dict_kwargs") and isinstance(value, dict):
            out.update(flat_args(value, prefix))
        elif isinstance(value, dict | Namespace):
            out.update(flat_args(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _config_path(key: str) -> str:
    """``"model.hidden"`` -> ``"model.init_args.hidden"`` (its place under the module's
    ``init_args``)."""
    return ".init_args.".join(key.split("."))


def _is_architecture(key: str) -> bool:
    group, _, name = key.partition(".")
    return group == "model" and name not in NON_SHAPE_ARGS


def _plain(value):
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.count(".") > 1:  # a class path: the object it names
        with contextlib.suppress(ImportError, AttributeError, ValueError):
            module, _, name = value.rpartition(".")
            return getattr(importlib.import_module(module), name)
    return value


class GraphemeCLI(LightningCLI):
    """LightningCLI with the package's defaults: best (by validation exact match) and last
    checkpoints, the training report, atomic checkpoint files, logs under
    ``default_root_dir``, and checks of ``--ckpt_path`` (see :meth:`_parse_ckpt_path`).

    ``validate``, ``test`` and ``predict`` need ``--ckpt_path`` (``--allow_untrained``
    runs them on a freshly initialised model); ``predict`` prints ``question<TAB>answer``
    lines (control characters escaped) or writes JSON Lines to ``--output FILE``.
    """

    def _prepare_subcommand_parser(self, klass, subcommand: str, **kwargs):
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand in ("validate", "test", "predict"):
            parser.add_argument(
                "--allow_untrained", type=bool, default=False,
                help="run without --ckpt_path, on a freshly initialised model",
            )
        if subcommand == "predict":
            # The progress bar writes to stdout, where the answers go.
            parser.set_defaults({"trainer.enable_progress_bar": False})
            parser.add_argument(
                "--output", type=str | None, default=None,
                help="write the answers to this JSON Lines file instead of printing them",
            )
        return parser

    def _parse_ckpt_path(self) -> None:
        """Check ``ckpt_path`` (from the command line or the config) and take the model's
        arguments from it.

        - an unreadable, corrupt, non-Lightning or NaN checkpoint: :class:`CheckpointError`;
        - ``validate`` / ``test`` / ``predict`` without one: :class:`UsageError`, unless
          ``--allow_untrained``;
        - old flat hyperparameters (``hidden``, ``lr``, ...) are translated
          (:meth:`~pyg_grapheme.training.base.InjectedModule.upgrade_hparams`);
        - model arguments set (on the command line or in a ``--config`` file) that differ
          from the checkpoint's: refused (:class:`UsageError`) when they change the
          network's shapes (``model.*`` but :data:`NON_SHAPE_ARGS`), or, in ``fit``, the
          optimizer or scheduler (whose states the checkpoint restores); any other
          difference (a loss weight, dropout, ...) is applied, with a warning on stderr
          for each. Model arguments named nowhere take the checkpoint's values. (Only
          ``--model.KEY`` flags and the ``model:`` section of ``--config`` files count
          as named; ``--model '{...}'`` as a whole does not.)
        """
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        ckpt_path = config.get("ckpt_path")
        if ckpt_path is None:
            if subcommand != "fit" and not config.get("allow_untrained"):
                raise UsageError(
                    f"{subcommand} needs a trained model: pass --ckpt_path CKPT (or "
                    f"--allow_untrained true to {subcommand} a freshly initialised one)"
                )
            return
        if str(ckpt_path) in {"last", "best", "hpc", "registry"}:
            return super()._parse_ckpt_path()
        ckpt = read_checkpoint(ckpt_path)
        saved = dict(ckpt.get("hyper_parameters") or {})
        module_cls = _import(saved.get("_class_path") or config["model"].get("class_path"))
        if hasattr(module_cls, "upgrade_hparams"):
            saved = module_cls.upgrade_hparams(saved)
        # a network built in Python left no config: the command line's is used
        saved = {k: v for k, v in saved.items()
                 if not (isinstance(v, str) and v.startswith("<") and k in INJECTED)}
        saved_flat, given_flat = flat_args(saved), flat_args(config["model"])
        explicit = self._explicit_model_args(subcommand)
        changed = {
            key: (given_flat[key], saved_flat[key]) for key in saved_flat
            if key in given_flat and _plain(given_flat[key]) != _plain(saved_flat[key])
            and any(key == e or key.startswith(e + ".") for e in explicit)
        }
        refused = [k for k in changed if _is_architecture(k)
                   or (subcommand == "fit" and k.split(".")[0] in OPTIMIZER_ARGS)]
        if refused:
            detail = ", ".join(f"--model.{k} {changed[k][0]!r} (checkpoint: {changed[k][1]!r})"
                               for k in refused)
            why = ("changes the architecture" if all(map(_is_architecture, refused))
                   else "changes the architecture or the optimizer, whose state is restored")
            raise UsageError(
                f"{detail}: {why}, so the checkpoint {str(ckpt_path)!r} cannot be used with it; "
                "drop the argument (the checkpoint's value is used) or train from scratch"
            )
        init_args = {k: v for k, v in saved.items() if not k.startswith("_")}
        model = {"class_path": config["model"].get("class_path"), "init_args": init_args}
        try:
            self.config = self.parser.parse_object({subcommand: {"model": model}}, self.config)
        except SystemExit:
            raise UsageError(f"the hyperparameters of checkpoint {str(ckpt_path)!r} do not "
                             "fit the model's arguments (see above)") from None
        for key, (value, old) in changed.items():
            self.config[f"{subcommand}.model.init_args.{_config_path(key)}"] = value
            print(f"warning: --model.{key} {value!r} replaces the checkpoint's {old!r}",
                  file=sys.stderr)

    def parse_arguments(self, parser, args) -> None:
        self._argv = [str(a) for a in (sys.argv[1:] if args is None else args)]
        super().parse_arguments(parser, args)

    def _explicit_model_args(self, subcommand: str) -> set[str]:
        """Model arguments named on the command line or in a ``--config`` file, as
        :func:`flat_args` keys (``model.hidden``, ``optimizer.lr``, ``ce_weight``)."""
        keys = set()
        for arg in getattr(self, "_argv", []):
            if arg.startswith("--model."):
                name = arg.removeprefix("--model.").split("=", 1)[0]
                keys.add(".".join(p for p in name.split(".")
                                  if p not in ("init_args", "dict_kwargs")))
        configs = [*(self.config.get("config") or []), *(self.config[subcommand].get("config")
                                                          or [])]
        for path in configs:
            with contextlib.suppress(OSError, yaml.YAMLError, AttributeError, TypeError):
                model = (yaml.safe_load(Path(str(path)).read_text()) or {}).get("model") or {}
                keys |= set(flat_args(model))
        return keys

    def predict(self, model, datamodule=None, **kwargs):
        """``trainer.predict``, then print (or write) the answers."""
        batches = self.trainer.predict(model, datamodule=datamodule, **kwargs)
        if not self.trainer.is_global_zero:
            return
        answers = [a for batch in batches or [] for a in batch]
        emit_answers(list(datamodule.hparams.predict_texts), answers,
                     self.config["predict"].get("output"))

    def add_arguments_to_parser(self, parser) -> None:
        # Any LightningModule / DataModule by class_path; without one, the text model.
        parser.set_defaults({
            "model": {"class_path": "pyg_grapheme.training.GraphemeModule"},
            "data": {"class_path": "pyg_grapheme.training.GraphemeDataModule"},
        })
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


_BIDI = set(range(0x202A, 0x202F)) | set(range(0x2066, 0x206A)) | {0x2028, 0x2029}


def escape(text: str) -> str:
    r"""``text`` safe for a terminal and for one TSV field: backslash, control characters
    (C0, DEL, C1), line/paragraph separators and bidirectional overrides become escapes
    (``\\``, ``\t``, ``\n``, ``\r``, ``\xNN``, ``\uNNNN``); everything else is kept."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif ch in "\t\n\r":
            out.append({"\t": "\\t", "\n": "\\n", "\r": "\\r"}[ch])
        elif code < 0x20 or 0x7F <= code <= 0x9F:
            out.append(f"\\x{code:02x}")
        elif code in _BIDI:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def emit_answers(texts: list[str], answers: list[str], output: str | None = None) -> None:
    """Print ``question<TAB>answer`` lines (escaped, see :func:`escape`), or write JSON
    Lines ``{"input": question, "answer": answer}`` to ``output`` (atomically)."""
    if len(texts) != len(answers):
        raise RuntimeError(f"{len(answers)} answers for {len(texts)} questions")
    if output is None:
        for text, answer in zip(texts, answers, strict=True):
            print(f"{escape(text)}\t{escape(answer)}")
        sys.stdout.flush()
        return
    lines = "".join(json.dumps({"input": t, "answer": a}, ensure_ascii=False) + "\n"
                    for t, a in zip(texts, answers, strict=True))
    atomic_write_bytes(output, lines.encode("utf-8"))
    print(f"{len(answers)} answers written to {output}", file=sys.stderr)


#: Errors that are the input's fault: one ``error:`` line and exit status 2 (``--debug``
#: shows the traceback). Anything else is a bug and keeps its traceback.
#: (``FloatingPointError``: the module's "loss is not finite", a diverged run.)
USER_ERRORS = (ValueError, OSError, RecursionError, FloatingPointError)


def _describe(err: BaseException) -> str:
    if isinstance(err, FloatingPointError):
        return f"{err}: training diverged; last.ckpt holds the last finite epoch"
    if isinstance(err, RecursionError):
        return f"input nested too deeply to read ({err})"
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        where = f" while writing {err.filename}" if err.filename else ""
        return f"no space left on device{where}: free some space and resume from last.ckpt"
    if isinstance(err, OSError) and err.filename and err.strerror:
        return f"{err.strerror}: {err.filename}"
    return str(err) or type(err).__name__


def main(argv: list[str] | None = None) -> None:
    """``python -m pyg_grapheme {fit,validate,test,predict} ...``; ``--debug`` anywhere
    shows the traceback of an input error instead of the one ``error:`` line."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if from_command_line:
        sys.argv[1:] = argv
    try:
        if argv[:1] == ["predict"] and "--text" in argv:
            # Shortcut: `predict --ckpt_path CKPT --text "..." [--text "..."]` prints answers.
            ckpt, texts, output = _parse_predict(argv[1:])
            emit_answers(texts, predict_texts(ckpt, texts), output)
            return
        GraphemeCLI(
            L.LightningModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=None if from_command_line else argv,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
        )
    except SIGTERMException:
        print("error: stopped by SIGTERM (last.ckpt saved: resume with --ckpt_path)",
              file=sys.stderr)
        raise SystemExit(143) from None
    except KeyboardInterrupt:  # outside fit (which saves last.ckpt and exits 1 itself)
        print("error: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except USER_ERRORS as err:
        if debug:
            raise
        print(f"error: {_describe(err)}", file=sys.stderr)
        raise SystemExit(2) from None


def _parse_predict(args: list[str]) -> tuple[str, list[str], str | None]:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pyg_grapheme predict")
    parser.add_argument("--ckpt_path", required=True)
    parser.add_argument("--text", action="append", required=True)
    parser.add_argument("--output", default=None)
    ns = parser.parse_args(args)
    return ns.ckpt_path, ns.text, ns.output
