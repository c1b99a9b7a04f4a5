"""What GraphemeModule and ExpressionModule share: an injected network, optimizer and
learning-rate scheduler (LightningCLI ``class_path`` / callables), hyperparameters that
rebuild them in :meth:`~lightning.pytorch.LightningModule.load_from_checkpoint`, the
translation of checkpoints with the old flat hyperparameters, the head's prior, and the
training statistics logged as epoch means without a ``self.log`` call per step."""

from __future__ import annotations

import functools
import importlib
import inspect
import io
import warnings
from collections.abc import Iterable
from typing import Any, ClassVar

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities.parsing import AttributeDict
from torch import Tensor, nn

#: Lightning's allowlisted instantiator: rebuilds ``class_path`` hyperparameters with
#: jsonargparse (what LightningCLI records for the modules it builds).
INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"
#: The constructor arguments that are objects, stored as ``class_path`` configs.
INJECTED = ("model", "loss", "optimizer", "lr_scheduler")


def class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def names_class(path: Any, cls: type) -> bool:
    """Whether the dotted ``path`` (a config's ``class_path``, e.g. the public
    ``pyg_grapheme.nn.GraphTransformNet``) imports as ``cls``."""
    if not isinstance(path, str) or "." not in path:
        return False
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name, None) is cls
    except ImportError:
        return False


def default_config(cls: type) -> dict[str, Any]:
    """``{"class_path", "init_args"}`` of ``cls()`` with every default spelt out, so a
    checkpoint keeps its network even if a default changes later."""
    init_args = {name: p.default for name, p in inspect.signature(cls).parameters.items()
                 if p.default is not inspect.Parameter.empty
                 and p.kind is not inspect.Parameter.VAR_KEYWORD}
    return {"class_path": class_path(cls), "init_args": init_args}


def describe(value: Any) -> Any:
    """The hyperparameter form of an injected argument: ``None`` and LightningCLI's
    configs unchanged; a class, or a ``functools.partial`` of one (what jsonargparse
    builds for ``OptimizerCallable``), as ``{"class_path", "init_args"}``; anything else
    (an ``nn.Module`` built in Python, a lambda) as a string naming its type, which
    :meth:`InjectedModule.load_from_checkpoint` cannot rebuild."""
    if value is None or isinstance(value, dict | str):
        return value
    if isinstance(value, type):
        return {"class_path": class_path(value)}
    if isinstance(value, functools.partial):
        cls = next((a for a in (value.func, *value.args) if isinstance(a, type)), None)
        if cls is not None:
            return {"class_path": class_path(cls), "init_args": dict(value.keywords)}
    config = _attribute_config(value)
    return config if config is not None else f"<{class_path(type(value))} built in Python>"


def _attribute_config(obj: Any) -> dict[str, Any] | None:
    """``{"class_path", "init_args"[, "dict_kwargs"]}`` of an object that keeps every
    constructor argument as an attribute of the same name (``**kwargs`` as a dict), as
    :class:`~pyg_grapheme.loss.StructuralLoss` does; ``None`` for any other object."""
    init_args: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for name, p in inspect.signature(type(obj)).parameters.items():
        if p.kind is inspect.Parameter.VAR_POSITIONAL or not hasattr(obj, name):
            return None
        value = getattr(obj, name)
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            if not isinstance(value, dict):
                return None
            extra = dict(value)
        elif isinstance(value, nn.Module | Tensor):
            return None
        else:
            init_args[name] = value
    config: dict[str, Any] = {"class_path": class_path(type(obj)), "init_args": init_args}
    if extra:
        config["dict_kwargs"] = extra
    return config


def answer_labels(dataset: Iterable) -> Tensor:
    """The byte slots ``x_t`` of every target in ``dataset``, concatenated (one tensor
    read of an ``InMemoryDataset`` without a subset index, else pair by pair)."""
    data = getattr(dataset, "_data", None)
    if data is not None and getattr(dataset, "_indices", None) is None:
        return data.x_t
    return torch.cat([pair.x_t for pair in dataset])


class InjectedModule(L.LightningModule):
    """Base of the package's LightningModules: ``self.model``, ``self.optimizer`` and
    ``self.lr_scheduler`` are injected (LightningCLI ``class_path`` in the YAMLs, or
    objects in Python); gradient clipping is the ``Trainer``'s ``gradient_clip_val``.

    Subclasses set :attr:`network` (the default model class) and :attr:`flat_optimizer`
    (the old flat optimizer arguments) and call :meth:`_save_hparams` in ``__init__``.
    """

    network: ClassVar[type[nn.Module]]
    #: the injected network, duck-typed (any module with :attr:`network`'s interface)
    model: Any
    optimizer: OptimizerCallable
    lr_scheduler: LRSchedulerCallable | None
    #: ``save_hyperparameters``' result (Lightning types the property more loosely); an
    #: annotation only, the property is untouched
    hparams: AttributeDict
    #: Adam's arguments among the old flat hyperparameters.
    flat_optimizer: ClassVar[tuple[str, ...]] = ("lr", "betas", "weight_decay")
    #: Old flat hyperparameters that are gone (clipping is the Trainer's gradient_clip_val).
    flat_dropped: ClassVar[tuple[str, ...]] = ("grad_clip",)
    #: Network arguments whose default changed (or that were added with a default that
    #: changes behaviour), with the value a checkpoint that does not name them was
    #: trained with (:meth:`upgrade_hparams`).
    network_defaults_before: ClassVar[dict[str, Any]] = {}

    def _save_hparams(self) -> None:
        """``save_hyperparameters()`` of the caller's ``__init__``, the injected objects
        stored as configs (see :func:`describe`)."""
        frame = inspect.currentframe()  # None only off CPython
        frame = frame.f_back if frame is not None else None
        with warnings.catch_warnings():
            # the modules are described below, not pickled into the hyperparameters
            warnings.filterwarnings("ignore", message=r"Attribute '\w+' is an instance of")
            self.save_hyperparameters(frame=frame)
        # LightningCLI hands save_hyperparameters its config (class_path dicts); in
        # Python the objects themselves arrive, which a weights_only load cannot read.
        for name in INJECTED:
            if name in self.hparams:
                self.hparams[name] = describe(self.hparams[name])
        if self.hparams.get("model") is None:
            self.hparams["model"] = default_config(self.network)

    def configure_optimizers(self):
        """``optimizer(parameters)``, and ``lr_scheduler(optimizer)`` stepped every epoch
        (``ReduceLROnPlateau`` watches ``train_loss``)."""
        optimizer = self.optimizer(self.parameters())
        if self.lr_scheduler is None:
            return optimizer
        scheduler = self.lr_scheduler(optimizer)
        config = {"scheduler": scheduler, "interval": "epoch"}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = "train_loss"
        return {"optimizer": optimizer, "lr_scheduler": config}

    # ------------------------------------------------------------------ step statistics

    def log_step_stats(self, stage: str, stats: dict[str, Tensor], batch_size: int,
                       prog_bar: tuple[str, ...] = ()) -> None:
        """Log a step's diagnostics (``{name: scalar}``) as epoch means weighted by
        ``batch_size``, synced across processes: what ``self.log(name, value,
        on_step=False, on_epoch=True, batch_size=batch_size, sync_dist=True,
        prog_bar=name in prog_bar)`` gives.

        Validation and test steps call ``self.log`` at once. Training steps add to
        running sums here, handed to ``self.log`` once, after the epoch's last batch
        (:meth:`flush_step_stats`): each ``self.log`` call costs ~0.45 ms of Lightning's
        bookkeeping, and nine a step were ~4 ms of a ~72 ms math2 training step
        (docs/training.md). An epoch-level value reaches the progress bar, callbacks and
        ``ReduceLROnPlateau`` at the same point either way.
        """
        if stage != "train":
            for name, value in stats.items():
                self.log(name, value, on_step=False, on_epoch=True, batch_size=batch_size,
                         sync_dist=True, prog_bar=name in prog_bar)
            return
        sums: dict[str, list] = self.__dict__.setdefault("_train_stats", {})
        for name, value in stats.items():
            value = value.detach().float() * batch_size
            entry = sums.get(name)
            if entry is None:
                sums[name] = [value, batch_size, name in prog_bar]
            else:
                entry[0] = entry[0] + value
                entry[1] += batch_size

    def flush_step_stats(self) -> None:
        """Log the training means :meth:`log_step_stats` collected since the last flush
        (summed over processes first, so each is the mean over every rank's batches)."""
        sums: dict[str, list] = self.__dict__.get("_train_stats") or {}
        if not sums:
            return
        names = list(sums)
        bar = {k for k in names if sums[k][2]}
        packed = torch.stack([torch.stack((sums[k][0], sums[k][0].new_tensor(sums[k][1])))
                              for k in names])
        packed = self.trainer.strategy.reduce(packed, reduce_op="sum")
        sums.clear()
        for name, (total, weight) in zip(names, packed, strict=True):
            self.log(name, total / weight, on_step=False, on_epoch=True, batch_size=1,
                     prog_bar=name in bar)

    def on_train_epoch_start(self) -> None:
        self.__dict__.get("_train_stats", {}).clear()  # steps run outside this fit

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.trainer.is_last_batch:
            self.flush_step_stats()

    def on_train_epoch_end(self) -> None:
        self.flush_step_stats()  # an epoch stopped early (max_steps, a callback)

    def init_head_prior(self) -> None:
        """Before training from scratch, set the byte head's output bias to the training
        answers' byte frequencies (:meth:`~pyg_grapheme.nn.ByteHead.init_output_prior`)."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        if (datamodule is None or self.global_step != 0 or self.trainer.ckpt_path
                or not hasattr(datamodule, "_dataset") or not hasattr(self.model, "head")):
            return
        self.model.head.init_output_prior(answer_labels(datamodule._dataset("train")))

    # ------------------------------------------------------------------ checkpoints

    @classmethod
    def upgrade_hparams(cls, hparams: dict[str, Any]) -> dict[str, Any]:
        """Checkpoint hyperparameters in today's form. Old checkpoints stored the
        network's and Adam's arguments flat (``hidden``, ``block``, ``lr``, ...); they
        become ``model`` / ``optimizer`` configs. A network config that does not name an
        argument of :attr:`network_defaults_before` was written before that argument
        existed or before its default changed: it gets the value it was trained with."""
        net_args = set(inspect.signature(cls.network).parameters)
        if "model" in hparams or not net_args & set(hparams):
            out = dict(hparams)
            model = out.get("model")
            if (isinstance(model, dict) and "init_args" in model
                    and names_class(model.get("class_path"), cls.network)):
                init_args = {**cls.network_defaults_before, **model["init_args"]}
                out["model"] = {**model, "init_args": init_args}
            return out
        flat = dict(hparams)
        model = default_config(cls.network)
        model["init_args"].update(cls.network_defaults_before)
        model["init_args"].update({k: flat.pop(k) for k in list(flat) if k in net_args})
        adam = {k: flat.pop(k) for k in cls.flat_optimizer if k in flat}
        if "betas" in adam:
            adam["betas"] = list(adam["betas"])
        out = {**flat, "model": model,
               "optimizer": {"class_path": "torch.optim.Adam", "init_args": adam}}
        for key in cls.flat_dropped:
            out.pop(key, None)
        return cls._upgrade_flat(hparams, out)

    @classmethod
    def _upgrade_flat(cls, flat: dict[str, Any], hparams: dict[str, Any]) -> dict[str, Any]:
        """Subclass hook: further translation of an old checkpoint's hyperparameters."""
        return hparams

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, hparams_file=None,
                             strict=None, weights_only=None, **kwargs):
        """:meth:`LightningModule.load_from_checkpoint`, after :meth:`upgrade_hparams`;
        the injected ``class_path`` configs are rebuilt with jsonargparse. A model built
        in Python (not by LightningCLI) has no config: pass it again (``model=...``)."""
        ckpt = torch.load(checkpoint_path, map_location="cpu",
                          weights_only=True if weights_only is None else weights_only)
        hparams = cls.upgrade_hparams(ckpt.get(cls.CHECKPOINT_HYPER_PARAMS_KEY) or {})
        for name in INJECTED:
            if isinstance(hparams.get(name), str) and hparams[name].startswith("<"):
                if name == "model" and "model" not in kwargs:
                    raise ValueError(
                        f"this checkpoint's model was {hparams[name][1:-1]}, so its "
                        "arguments were not recorded: pass the same network, e.g. "
                        f"{cls.__name__}.load_from_checkpoint(path, model="
                        f"{cls.network.__name__}(...)), or train with LightningCLI "
                        "(model: class_path in the YAML), which records them")
                hparams.pop(name)  # an optimizer or loss we cannot rebuild: the default
        hparams["_instantiator"] = INSTANTIATOR
        ckpt[cls.CHECKPOINT_HYPER_PARAMS_KEY] = hparams
        buffer = io.BytesIO()
        torch.save(ckpt, buffer)
        buffer.seek(0)
        return super().load_from_checkpoint(buffer, map_location=map_location,
                                            hparams_file=hparams_file, strict=strict,
                                            weights_only=weights_only, **kwargs)
