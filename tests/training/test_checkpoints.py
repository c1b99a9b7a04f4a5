"""last.ckpt every epoch and on SIGTERM, atomic checkpoint files, resume after a kill."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from pyg_grapheme.training.callbacks import AtomicCheckpointIO, LastCheckpoint, atomic_write_bytes
from pyg_grapheme.training.cli import read_checkpoint
from tests.training.helpers import epoch_metrics, train

ROOT = Path(__file__).resolve().parents[2]
SMALL = {"hidden": 16, "heads": 2, "encoder_layers": 1, "decoder_layers": 1,
         "max_answer_length": 16}


class SigtermAt(Callback):
    """Send this process SIGTERM at the end of training epoch ``epoch``."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGTERM)


def test_last_checkpoint_every_epoch_and_resume_after_sigterm(tmp_path):
    """SIGTERM after epoch 2 of 6: last.ckpt holds epoch 2, and resuming from it gives
    the curve of the uninterrupted run."""
    train(tmp_path / "full", 6, net_kwargs=SMALL)
    last_dir = tmp_path / "part" / "last"
    with pytest.raises(SIGTERMException):
        train(tmp_path / "part", 6, net_kwargs=SMALL, plugins=[AtomicCheckpointIO()],
              callbacks=[LastCheckpoint(dirpath=str(last_dir)), SigtermAt(2)])
    assert [p.name for p in last_dir.iterdir()] == ["last.ckpt"]  # no temporary files
    ckpt = read_checkpoint(last_dir / "last.ckpt")
    assert ckpt["epoch"] == 2
    train(tmp_path / "part", 6, net_kwargs=SMALL, ckpt_path=last_dir / "last.ckpt",
          version=1, callbacks=[LastCheckpoint(dirpath=str(last_dir))])
    full = epoch_metrics(tmp_path / "full" / "logs" / "version_0")["train_loss"]
    part = epoch_metrics(tmp_path / "part" / "logs" / "version_0")["train_loss"]
    resumed = epoch_metrics(tmp_path / "part" / "logs" / "version_1")["train_loss"]
    assert sorted(part) == [0, 1, 2] and sorted(resumed) == [3, 4, 5]
    part.update(resumed)
    for epoch in range(6):
        assert part[epoch] == pytest.approx(full[epoch], rel=1e-6, abs=1e-7), epoch
    assert read_checkpoint(last_dir / "last.ckpt")["epoch"] == 5


def test_last_checkpoint_written_each_epoch(tmp_path):
    seen = []

    class Watch(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            path = tmp_path / "last" / "last.ckpt"
            seen.append(torch.load(path, weights_only=True)["epoch"] if path.exists() else None)

    train(tmp_path, 3, net_kwargs=SMALL, val_every=2,
          callbacks=[LastCheckpoint(dirpath=str(tmp_path / "last")), Watch()])
    assert seen == [None, 0, 1]


def test_atomic_write_keeps_the_old_file_on_error(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_write_bytes(path, b"old")

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_bytes(path, b"new" * 1000)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def _fit_cmd(tmp: Path, *extra) -> list[str]:
    return [sys.executable, "-m", "pyg_grapheme", "fit",
            "--config", str(ROOT / "experiments" / "kindergarten.yaml"),
            "--trainer.max_epochs", "100000", "--trainer.check_val_every_n_epoch", "1000",
            "--trainer.default_root_dir", str(tmp / "runs"),
            "--data.root", str(tmp / "cache"), "--model.model.hidden", "16",
            "--model.model.heads", "2", "--model.model.encoder_layers", "1",
            "--model.model.decoder_layers", "1", *extra]


def _newest_last(tmp: Path) -> Path | None:
    found = sorted((tmp / "runs").rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def test_kill_9_never_leaves_a_bad_checkpoint(tmp_path):
    """Three runs, each resuming from the previous one's last.ckpt, killed with SIGKILL at
    a random moment once it has written a checkpoint: every ``*.ckpt`` file loads."""
    rng = random.Random(0)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    resume: list[str] = []
    epochs = []
    for _ in range(3):
        before = _newest_last(tmp_path)
        before_mtime = before.stat().st_mtime if before else 0.0
        proc = subprocess.Popen(_fit_cmd(tmp_path, *resume), cwd=tmp_path, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                newest = _newest_last(tmp_path)
                if newest is not None and newest.stat().st_mtime > before_mtime:
                    break
                assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
                time.sleep(0.05)
            else:
                pytest.fail("no last.ckpt within 120 s")
            time.sleep(rng.uniform(0.0, 1.5))
        finally:
            proc.kill()
            proc.wait()
        for ckpt in (tmp_path / "runs").rglob("*.ckpt"):
            read_checkpoint(ckpt)  # raises on a truncated or corrupt file
        newest = _newest_last(tmp_path)
        epochs.append(read_checkpoint(newest)["epoch"])
        resume = ["--ckpt_path", str(newest)]
    assert epochs == sorted(epochs) and epochs[-1] > epochs[0]


def _save(module, path: Path, hparams: dict) -> Path:
    """A checkpoint file as Lightning writes one (what loading reads of it)."""
    import lightning as L

    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hparams,
                "pytorch-lightning_version": L.__version__}, path)
    return path


def _same_weights(a, b) -> None:
    assert a.state_dict().keys() == b.state_dict().keys()
    for key, value in a.state_dict().items():
        assert torch.equal(b.state_dict()[key], value), key


def test_injected_network_loss_and_optimizer_round_trip(tmp_path):
    """In Python: the loss and optimizer are stored as class_path configs and rebuilt; the
    network, whose arguments a module built in Python does not record, must be passed
    again, and loading without it names that fix. The default network is recorded."""
    from functools import partial

    from pyg_grapheme.loss import StructuralLoss
    from pyg_grapheme.nn import GraphTransformNet
    from pyg_grapheme.training import GraphemeModule

    small = {"hidden": 16, "heads": 2, "max_answer_length": 4}
    module = GraphemeModule(GraphTransformNet(**small), loss=StructuralLoss(alpha=2.0, beta=0.0),
                            optimizer=partial(torch.optim.SGD, lr=0.1), ce_weight=3.0)
    path = _save(module, tmp_path / "py.ckpt", dict(module.hparams))
    with pytest.raises(ValueError, match=r"pass the same network.*model=GraphTransformNet"):
        GraphemeModule.load_from_checkpoint(path)
    loaded = GraphemeModule.load_from_checkpoint(path, model=GraphTransformNet(**small))
    _same_weights(module, loaded)
    assert (loaded.loss.alpha, loaded.loss.beta, loaded.hparams.ce_weight) == (2.0, 0.0, 3.0)
    opt = loaded.configure_optimizers()
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["lr"] == 0.1

    default = GraphemeModule()
    loaded = GraphemeModule.load_from_checkpoint(
        _save(default, tmp_path / "default.ckpt", dict(default.hparams)))
    _same_weights(default, loaded)
    assert default.hparams.model["init_args"]["hidden"] == 128  # every default spelt out


def _old_hparams(**net) -> dict:
    """The flat hyperparameters GraphemeModule saved before the network was injected."""
    return {**net, "segmentation_weight": 1.0, "alpha": 1.0, "beta": 0.5, "gamma": 2.0,
            "reg": 0.05, "ce_weight": 0.0, "segment_forcing": False, "boundary_weight": 1.0,
            "lr": 0.01, "betas": (0.9, 0.98), "weight_decay": 0.0, "grad_clip": 0.25,
            "warmup_epochs": 0, "cosine": False, "min_lr_ratio": 0.1,
            "init_head_prior": True, "num_examples": 4}


def test_old_flat_checkpoint_is_translated(tmp_path):
    """A checkpoint with the old flat hyperparameters (hidden, heads, lr, alpha, ...)
    loads: the network's arguments become model=GraphTransformNet(...), Adam's the
    optimizer, the structural weights the loss; grad_clip is dropped (the Trainer's)."""
    from pyg_grapheme.nn import GraphTransformNet
    from pyg_grapheme.training import GraphemeModule

    small = {"hidden": 16, "heads": 2, "max_answer_length": 4}
    old = GraphemeModule(GraphTransformNet(**small, **GraphemeModule.network_defaults_before))
    path = _save(old, tmp_path / "old.ckpt", _old_hparams(**small))
    loaded = GraphemeModule.load_from_checkpoint(path)
    _same_weights(old, loaded)
    assert loaded.model.hidden == 16 and loaded.model.max_answer_length == 4
    assert (loaded.loss.alpha, loaded.loss.beta, loaded.loss.gamma) == (1.0, 0.5, 2.0)
    opt = loaded.configure_optimizers()
    assert isinstance(opt, torch.optim.Adam)
    assert opt.defaults["lr"] == 0.01 and tuple(opt.defaults["betas"]) == (0.9, 0.98)
    assert "grad_clip" not in loaded.hparams and "hidden" not in loaded.hparams
    # what the CLI wrote: the same flat keys with LightningCLI's private ones
    cli_form = {**_old_hparams(**small), "_class_path": "pyg_grapheme.training.GraphemeModule",
                "_instantiator": "lightning.pytorch.cli.instantiate_module"}
    _same_weights(old, GraphemeModule.load_from_checkpoint(_save(old, path, cli_form)))
    # the --text shortcut reads it too (weights_only)
    from pyg_grapheme.training.cli import load_checkpoint

    assert load_checkpoint(path).model.hidden == 16
    # a schedule that cannot be carried over is named
    _save(old, path, {**_old_hparams(**small), "warmup_epochs": 5})
    with pytest.warns(UserWarning, match="warm-up/cosine.*lr_scheduler"):
        GraphemeModule.load_from_checkpoint(path)


def test_old_flat_expression_checkpoint_is_translated(tmp_path):
    from pyg_grapheme.nn import ExpressionNet
    from pyg_grapheme.training import ExpressionModule

    old = ExpressionModule(ExpressionNet(hidden=16, heads=2))
    hparams = {"hidden": 16, "heads": 2, "alpha": 1.0, "beta": 0.3, "lr": 0.003,
               "weight_decay": 0.0, "grad_clip": 1.0, "node_cost": "nll"}
    loaded = ExpressionModule.load_from_checkpoint(_save(old, tmp_path / "e.ckpt", hparams))
    _same_weights(old, loaded)
    assert loaded.hparams.beta == 0.3 and loaded.configure_optimizers().defaults["lr"] == 0.003


def test_checkpoint_of_other_layers_fails_clearly_or_loads(tmp_path):
    """A checkpoint saved before ``block`` existed (GPSConv layers, no ``block`` in its
    hyperparameters) loads with today's default; asking for the other layers' form names
    the checkpoint's form instead of a list of missing keys."""
    from pyg_grapheme.nn import GraphTransformNet
    from pyg_grapheme.training import GraphemeModule

    small = {"hidden": 16, "heads": 2, "max_answer_length": 4}
    before = GraphemeModule.network_defaults_before
    old = GraphemeModule(GraphTransformNet(**small, block="gps", **before))
    path = _save(old, tmp_path / "old.ckpt", _old_hparams(**small))
    _same_weights(old, GraphemeModule.load_from_checkpoint(path))
    with pytest.raises(ValueError, match="holds block='gps'.*load_from_checkpoint"):
        GraphemeModule.load_from_checkpoint(
            path, model=GraphTransformNet(**small, block="pre_ln", **before))


def test_checkpoint_from_before_a_default_changed_keeps_its_network(tmp_path):
    """``run_positions``, ``canvas_scale``, ``pool_tau``, ``relative_positions`` and
    ``canvas_align`` changed defaults (0 -> 32, 1 -> 0.02, 1 -> 0.5, 0 -> 32, left ->
    right). A checkpoint whose network
    config does not name them (LightningCLI's form, written before they existed; and the
    old flat form) loads with the values it was trained with: the same weights (no
    missing run-position or relative-bias table) and the same answers."""
    from pyg_grapheme.nn import GraphTransformNet
    from pyg_grapheme.training import GraphemeModule

    small = {"hidden": 16, "heads": 2, "max_answer_length": 4}
    before = GraphemeModule.network_defaults_before
    assert before == {"run_positions": 0, "canvas_scale": 1.0, "pool_tau": 1.0,
                      "relative_positions": 0, "canvas_align": "left"}
    today = GraphTransformNet()
    assert today.enc[0].relative is not None
    assert today.canvas_scale != before["canvas_scale"]  # changed defaults
    assert today.pool.tau != before["pool_tau"]
    torch.manual_seed(0)
    old = GraphemeModule(GraphTransformNet(**small, **before))
    config = {"class_path": "pyg_grapheme.nn.GraphTransformNet", "init_args": dict(small)}
    hparams = {**dict(old.hparams), "model": config}
    for form in (hparams, _old_hparams(**small)):
        loaded = GraphemeModule.load_from_checkpoint(_save(old, tmp_path / "b.ckpt", form))
        _same_weights(old, loaded)
        assert (loaded.model.canvas_scale, loaded.model.encoder.run_positions) == (1.0, 0)
        assert loaded.model.canvas_align == "left" != today.canvas_align
        assert loaded.model.pool.tau == 1.0
        assert all(layer.relative is None for layer in loaded.model.enc)
        old.eval(), loaded.eval()
        assert loaded.model.generate(["hi", "2+2"]) == old.model.generate(["hi", "2+2"])
    # a checkpoint that names them keeps what it names
    named = {**hparams, "model": {**config, "init_args": {**small, "canvas_scale": 0.5}}}
    loaded = GraphemeModule.load_from_checkpoint(_save(old, tmp_path / "n.ckpt", named))
    assert loaded.model.canvas_scale == 0.5
