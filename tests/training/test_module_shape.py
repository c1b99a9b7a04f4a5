"""GraphemeModule's shape: the injected optimizer and scheduler, and the YAML of
docs/training.md building what it says."""

import re
from functools import partial
from pathlib import Path

import torch
import yaml
from lightning.pytorch.cli import instantiate_module

from pyg_grapheme.loss import StructuralLoss
from pyg_grapheme.nn import GraphTransformNet
from pyg_grapheme.training import GraphemeModule

ROOT = Path(__file__).resolve().parents[2]
SMALL = {"hidden": 16, "heads": 2, "max_answer_length": 4}


def test_optimizer_and_scheduler_callables():
    module = GraphemeModule(GraphTransformNet(**SMALL))
    opt = module.configure_optimizers()
    assert isinstance(opt, torch.optim.Adam) and opt.defaults["lr"] == 1e-3
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {
        id(p) for p in module.parameters()}
    module = GraphemeModule(
        GraphTransformNet(**SMALL), optimizer=partial(torch.optim.SGD, lr=0.5),
        lr_scheduler=partial(torch.optim.lr_scheduler.LinearLR, start_factor=0.1))
    config = module.configure_optimizers()
    assert isinstance(config["optimizer"], torch.optim.SGD)
    sched = config["lr_scheduler"]
    assert isinstance(sched["scheduler"], torch.optim.lr_scheduler.LinearLR)
    assert sched["interval"] == "epoch"
    assert config["optimizer"].param_groups[0]["lr"] == 0.5 * 0.1  # the warm-up applied
    plateau = GraphemeModule(GraphTransformNet(**SMALL),
                             lr_scheduler=torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert plateau.configure_optimizers()["lr_scheduler"]["monitor"] == "train_loss"


def test_the_documented_yaml_builds_what_it_says():
    text = (ROOT / "docs" / "training.md").read_text()
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if "class_path" in b)
    config = yaml.safe_load(block)
    assert config["trainer"]["gradient_clip_val"] == 0.25
    module = instantiate_module(GraphemeModule, config["model"]["init_args"])
    assert isinstance(module.model, GraphTransformNet) and module.model.hidden == 128
    assert isinstance(module.loss, StructuralLoss) and module.loss.gamma == 2.0
    out = module.configure_optimizers()
    assert out["optimizer"].defaults["lr"] == 1e-3
    assert isinstance(out["lr_scheduler"]["scheduler"],
                      torch.optim.lr_scheduler.CosineAnnealingLR)


def test_shipped_configs_clip_on_the_trainer_and_inject_the_network():
    """The clip values the modules applied themselves before (0.25 text, 1.0 expression)
    are the Trainer's now; no YAML sets a logger save_dir or a module grad_clip."""
    clips = {"kindergarten": 0.25, "math1": 0.25, "expression": 1.0}
    for name, clip in clips.items():
        text = (ROOT / "experiments" / f"{name}.yaml").read_text()
        config = yaml.safe_load(text)
        assert config["trainer"]["gradient_clip_val"] == clip, name
        assert "logger" not in config["trainer"] and "grad_clip" not in text, name
        assert config["model"]["init_args"]["model"]["class_path"].startswith("pyg_grapheme.nn.")
        assert config["model"]["init_args"]["optimizer"]["class_path"] == "torch.optim.Adam"
