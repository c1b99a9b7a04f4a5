"""Every shipped config (experiments/*.yaml) leaves where a run writes to
``--trainer.default_root_dir`` (issue 15 item 4): the CLI tests run kindergarten,
expression and dag with it; this checks that no config, those or any added later, names
another place (a logger's ``save_dir``, a checkpoint ``dirpath``, a data ``root``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "experiments").glob("*.yaml"))
#: Keys that would send a run's files somewhere else than default_root_dir.
PATH_KEYS = {"save_dir", "dirpath", "root", "log_dir", "logger", "ckpt_path", "cache_dir"}


def _keys(node, trail=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*trail, key)
            yield from _keys(value, (*trail, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _keys(value, (*trail, i))


def test_the_shipped_configs_are_found():
    assert {"kindergarten", "math1", "expression", "dag"} <= {p.stem for p in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_writes_only_under_default_root_dir(path):
    config = yaml.safe_load(path.read_text())
    trainer = config["trainer"]
    assert trainer["default_root_dir"] == f"runs/{path.stem}"
    elsewhere = [".".join(map(str, k)) for k in _keys(config) if k[-1] in PATH_KEYS]
    assert not elsewhere, f"{path.name} sets {elsewhere}: use --trainer.default_root_dir"
    # clipping is the Trainer's, the network is injected by class_path
    assert "gradient_clip_val" in trainer
    assert config["model"]["init_args"]["model"]["class_path"].startswith("pyg_grapheme.nn.")


def test_a_config_with_its_own_logger_dir_is_caught():
    config = {"trainer": {"default_root_dir": "runs/x", "logger": {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": "runs/x"}}}}
    assert {k[-1] for k in _keys(config)} & PATH_KEYS == {"logger", "save_dir"}
