"""The command line: fit/predict end to end, and bad input stopping before training."""

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def cli(*args, cwd):
    # PYTHONPATH: the package of this checkout, not whichever one is installed.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "pyg_grapheme", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600, env=env)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One short fit with ``--trainer.default_root_dir out`` (run from ``tmp``)."""
    tmp = tmp_path_factory.mktemp("cli")
    rc, out, err = cli("fit", "--config", ROOT / "experiments" / "kindergarten.yaml",
                       "--trainer.max_epochs", 3, "--trainer.check_val_every_n_epoch", 1,
                       "--trainer.default_root_dir", "out",
                       "--model.model.hidden", 32, "--model.model.heads", 2, cwd=tmp)
    assert rc == 0, err[-3000:]
    return tmp / "out", out


def test_fit_writes_logs_checkpoints_plot_and_table(fitted):
    tmp, out = fitted
    metrics = next(tmp.rglob("metrics.csv")).read_text().splitlines()
    header = metrics[0].split(",")
    assert any("train" in h and "loss" in h for h in header)
    ckpts = {p.name for p in tmp.rglob("*.ckpt")}
    assert "last.ckpt" in ckpts and any(n.startswith("best") for n in ckpts)
    png = next(tmp.rglob("curves.png"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| question | answer | target |" in out and "exact match:" in out


def test_default_root_dir_holds_everything(fitted):
    """Logs, checkpoints, plot, answer table, config and the dataset cache all land
    under ``--trainer.default_root_dir`` (the YAML's ``runs/kindergarten`` is not used)."""
    root, _ = fitted
    cwd = root.parent
    assert sorted(p.name for p in cwd.iterdir()) == ["out"]
    assert any((root / "data_cache").rglob("*.pt"))
    version = root / "logs" / "version_0"
    for name in ("metrics.csv", "curves.png", "answers.md", "config.yaml",
                 "checkpoints/last.ckpt"):
        assert (version / name).is_file(), name
    assert {p.parent for p in root.rglob("*.ckpt")} == {version / "checkpoints"}


def test_cli_checkpoint_loads_its_injected_network(fitted):
    """LightningCLI records the injected model/optimizer as class_path configs, and
    ``load_from_checkpoint`` rebuilds them (weights_only)."""
    from pyg_grapheme.nn import GraphTransformNet
    from pyg_grapheme.training import GraphemeModule

    root, _ = fitted
    ckpt_path = next(root.rglob("last.ckpt"))
    ckpt = torch.load(ckpt_path, weights_only=True)
    hparams = ckpt["hyper_parameters"]
    assert hparams["model"]["class_path"] == "pyg_grapheme.nn.GraphTransformNet"
    assert hparams["optimizer"]["class_path"] == "torch.optim.Adam"
    # every network argument is recorded, defaults too: a checkpoint that does not name
    # one predates it (GraphemeModule.network_defaults_before)
    init_args = hparams["model"]["init_args"]
    assert (init_args["canvas_scale"], init_args["run_positions"]) == (0.02, 32)
    assert "grad_clip" not in hparams and "hidden" not in hparams
    module = GraphemeModule.load_from_checkpoint(ckpt_path, weights_only=True)
    assert isinstance(module.model, GraphTransformNet) and module.model.hidden == 32
    for key, value in ckpt["state_dict"].items():
        assert torch.equal(module.state_dict()[key], value), key
    assert module.configure_optimizers().defaults["lr"] == 0.001


def test_loggers_csv_always_tensorboard_when_installed(tmp_path, monkeypatch):
    """CSV (what the plots and tests read) always; TensorBoard beside it, in the same
    version folder, when tensorboard or tensorboardX is importable."""
    import lightning.fabric.loggers.tensorboard as tb
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from pyg_grapheme.training.cli import default_loggers

    monkeypatch.setattr(tb, "_TENSORBOARD_AVAILABLE", False)
    monkeypatch.setattr(tb, "_TENSORBOARDX_AVAILABLE", False)
    (csv,) = default_loggers(tmp_path)
    assert isinstance(csv, CSVLogger) and Path(csv.log_dir) == tmp_path / "logs" / "version_0"
    monkeypatch.setattr(tb, "_TENSORBOARD_AVAILABLE", True)
    csv, board = default_loggers(tmp_path)
    assert isinstance(csv, CSVLogger) and isinstance(board, TensorBoardLogger)
    assert Path(board.log_dir) == Path(csv.log_dir)


def test_predict_prints_answers(fitted):
    tmp, _ = fitted
    ckpt = next(tmp.rglob("last.ckpt"))
    rc, out, err = cli("predict", "--ckpt_path", ckpt, "--text", "What colour is snow?",
                       "--text", "caf\u00e9?", cwd=tmp)
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == ["What colour is snow?", "caf\u00e9?"]


def test_corrupt_checkpoint_is_a_clear_error(fitted):
    tmp, _ = fitted
    bad = tmp / "bad.ckpt"
    bad.write_bytes(next(tmp.rglob("last.ckpt")).read_bytes()[:1000])  # truncated
    rc, _, err = cli("predict", "--ckpt_path", bad, "--text", "hi", cwd=tmp)
    assert rc == 2 and "corrupt" in err and "Traceback" not in err
    rc, _, err = cli("fit", "--config", ROOT / "experiments" / "kindergarten.yaml",
                     "--ckpt_path", bad, "--data.root", tmp / "cache", cwd=tmp)
    assert rc == 2 and "corrupt" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data.train_file", "no/such/file.jsonl"], "neither a file nor a dataset name"),
        (["--data.train_file", "math9"], "neither a file nor a dataset name"),
        (["--data.train_file", "{bad}"], "bad.jsonl:2"),
        (["--model.no_such_option", "1"], "no_such_option"),
    ],
)
def test_bad_input_stops_before_training(tmp_path, args, message):
    (tmp_path / "bad.jsonl").write_text('{"input": "a", "target": "b"}\n{"input": 3}\n')
    args = [a.replace("{bad}", str(tmp_path / "bad.jsonl")) for a in args]
    rc, out, err = cli("fit", "--config", ROOT / "experiments" / "kindergarten.yaml",
                       "--trainer.default_root_dir", tmp_path, "--data.root",
                       tmp_path / "cache", *args, cwd=tmp_path)
    assert rc != 0 and message in err, err[-2000:]
    assert "Traceback" not in err
    assert not list(tmp_path.rglob("*.ckpt"))  # nothing trained


# ---------------------------------------------------------------- in-process CLI runs


def run_main(*args, capsys) -> tuple[int, str, str]:
    """``main(args)`` in this process: (exit status, stdout, stderr)."""
    from pyg_grapheme.training.cli import main

    loggers = [logging.getLogger(), *logging.root.manager.loggerDict.values()]
    for logger in loggers:  # Lightning's handlers may hold an earlier test's closed stream
        for handler in getattr(logger, "handlers", []):
            if type(handler) is logging.StreamHandler:
                handler.stream = sys.stderr
    try:
        main([str(a) for a in args])
        rc = 0
    except SystemExit as exit_:
        rc = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    out, err = capsys.readouterr()
    return rc, out, err


def small_fit(root: Path, *extra) -> list:
    return ["fit", "--config", ROOT / "experiments" / "kindergarten.yaml",
            "--trainer.default_root_dir", root, "--data.root", root / "cache",
            "--trainer.enable_progress_bar", "false", "--report.print_table", "false",
            "--trainer.check_val_every_n_epoch", 1, *extra]


def test_resume_refuses_an_architecture_change(fitted, tmp_path, capsys):
    root, _ = fitted
    ckpt = next(root.rglob("last.ckpt"))
    # The YAML's hidden 128 is a model argument too: the checkpoint has 32.
    for args in ([], ["--model.model.hidden", 32, "--model.model.heads", 4],
                 ["--model.model.hidden", 32, "--model.model.heads", 2,
                  "--model.optimizer.lr", 0.01]):
        rc, _, err = run_main(*small_fit(tmp_path, "--ckpt_path", ckpt,
                                         "--trainer.max_epochs", 4, *args), capsys=capsys)
        assert rc == 2 and err.startswith("error: --model.") and "checkpoint" in err, err
        assert "Traceback" not in err
    assert not list(tmp_path.rglob("*.ckpt"))


def test_resume_applies_other_model_arguments_with_a_warning(fitted, tmp_path, capsys):
    root, _ = fitted
    ckpt = next(root.rglob("last.ckpt"))
    rc, _, err = run_main(*small_fit(tmp_path, "--ckpt_path", ckpt, "--trainer.max_epochs", 4,
                                     "--model.model.hidden", 32, "--model.ce_weight", 2),
                          capsys=capsys)
    assert rc == 0, err[-2000:]
    assert "warning: --model.ce_weight 2" in err and "0.0" in err
    resumed = torch.load(next(tmp_path.rglob("last.ckpt")), weights_only=True)
    assert resumed["epoch"] == 3
    assert resumed["hyper_parameters"]["ce_weight"] == 2
    assert resumed["hyper_parameters"]["model"]["init_args"]["heads"] == 2  # not given
    metrics = next(tmp_path.rglob("metrics.csv")).read_text()
    assert "train_cross_entropy" in metrics.splitlines()[0]


def test_predict_from_data_predict_texts_prints_and_writes(fitted, tmp_path, capsys):
    root, _ = fitted
    ckpt = next(root.rglob("last.ckpt"))
    texts = '["What colour is snow?", "a\\u001b[31mb\\nc"]'
    common = ["predict", "--ckpt_path", ckpt, "--data.predict_texts", texts,
              "--trainer.default_root_dir", tmp_path, "--data.root", tmp_path / "cache"]
    rc, out, err = run_main(*common, capsys=capsys)
    assert rc == 0, err[-2000:]
    lines = out.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["What colour is snow?",
                                                         "a\\x1b[31mb\\nc"]
    assert "\x1b" not in out
    rc, out, err = run_main(*common, "--output", tmp_path / "answers.jsonl", capsys=capsys)
    assert rc == 0, err[-2000:]
    records = [json.loads(x) for x in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert [r["input"] for r in records] == ["What colour is snow?", "a\x1b[31mb\nc"]
    from pyg_grapheme.training.cli import escape

    assert [escape(r["answer"]) for r in records] == [line.split("\t")[1] for line in lines]
    # The --text shortcut: the same answers, escaped when printed, raw in the file.
    rc, out, err = run_main("predict", "--ckpt_path", ckpt, "--text", "What colour is snow?",
                            "--text", "a\x1b[31mb\nc", capsys=capsys)
    assert rc == 0 and out.splitlines() == lines, err[-2000:]
    rc, out, err = run_main("predict", "--ckpt_path", ckpt, "--text", "a\x1b[31mb\nc",
                            "--output", tmp_path / "one.jsonl", capsys=capsys)
    assert rc == 0 and out == "", err[-2000:]
    assert json.loads((tmp_path / "one.jsonl").read_text()) == records[1]


def test_escape_control_characters():
    from pyg_grapheme.training.cli import escape

    assert escape("caf\u00e9 \U0001F431") == "caf\u00e9 \U0001F431"
    assert escape("a\tb\nc\rd\\e") == "a\\tb\\nc\\rd\\\\e"
    assert escape("\x1b[2J\x7f\x9b\u202e") == "\\x1b[2J\\x7f\\x9b\\u202e"


@pytest.mark.parametrize("command", ["predict", "test", "validate"])
def test_evaluation_without_a_checkpoint_is_refused(tmp_path, capsys, command):
    args = [command, "--data.predict_texts", '["hi"]', "--data.test_file", "kindergarten",
            "--trainer.default_root_dir", tmp_path, "--data.root", tmp_path / "cache",
            # without a config the network is None (the default): name it, then its args
            "--model.model", "GraphTransformNet", "--model.model.hidden", 16,
            "--model.model.heads", 2]
    rc, out, err = run_main(*args, capsys=capsys)
    assert rc == 2 and "error: " + command + " needs a trained model" in err, err[-2000:]
    if command == "predict":
        rc, out, err = run_main(*args, "--allow_untrained", "true", capsys=capsys)
        assert rc == 0 and out.split("\t")[0] == "hi", err[-2000:]


@pytest.mark.parametrize("sig, status, message", [
    (signal.SIGTERM, 143, "error: stopped by SIGTERM"),
    (signal.SIGINT, 1, "Detected KeyboardInterrupt"),
])
def test_signal_during_fit_saves_last_and_exits_nonzero(tmp_path, sig, status, message):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pyg_grapheme", "fit", "--config",
           str(ROOT / "experiments" / "kindergarten.yaml"), "--trainer.max_epochs", "100000",
           "--trainer.default_root_dir", "out", "--data.root", "cache",
           "--model.model.hidden", "16", "--model.model.heads", "2",
           "--trainer.enable_progress_bar", "false"]
    # An xdist worker may run with SIGINT ignored and a child inherits that (Python then never
    # raises KeyboardInterrupt): give the fit the default disposition, as a shell does.
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.rglob("last.ckpt")):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == status, err[-2000:]
    assert message in err and "Traceback" not in err, err[-2000:]
    from pyg_grapheme.training.cli import read_checkpoint

    read_checkpoint(next(tmp_path.rglob("last.ckpt")))


class _Payload:
    """Pickles as a call to ``open(marker, "w")``: loading it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _nan_checkpoint(src: Path, dst: Path) -> Path:
    ckpt = torch.load(src, weights_only=True)
    key = next(k for k, v in ckpt["state_dict"].items() if v.is_floating_point())
    ckpt["state_dict"][key] = torch.full_like(ckpt["state_dict"][key], float("nan"))
    torch.save(ckpt, dst)
    return dst


@pytest.mark.parametrize(
    "case, message",
    [
        ("folder", "is a folder"),
        ("deep", "nested too deeply"),
        ("nan_ckpt", "NaN or infinite parameters"),
        ("torch_file", "not a Lightning checkpoint"),
        ("ckpt_in_config", "does not exist"),
        ("folder_ckpt", "is a folder, not a checkpoint"),
        ("planted_cache", "refusing to load the dataset cache"),
    ],
)
def test_input_errors_are_one_line(fitted, tmp_path, capsys, case, message):
    root, _ = fitted
    ckpt = next(root.rglob("last.ckpt"))
    (tmp_path / "dir.jsonl").mkdir()
    deep = tmp_path / "deep.jsonl"
    deep.write_text('{"input": ' + "[" * 100_000 + "]" * 100_000 + ', "target": "b"}\n')
    torch.save({"weights": torch.zeros(3)}, tmp_path / "plain.pt")
    config = tmp_path / "with_ckpt.yaml"
    config.write_text(f"ckpt_path: {tmp_path / 'missing.ckpt'}\n")
    if case == "planted_cache":
        from pyg_grapheme.data import KindergartenDataset

        cache = Path(KindergartenDataset(tmp_path / "cache", log=False).processed_paths[0])
        torch.save((_Payload(tmp_path / "marker"), {}, None), cache)
    extra = {
        "planted_cache": [],
        "folder": ["--data.train_file", tmp_path / "dir.jsonl"],
        "deep": ["--data.train_file", deep],
        "nan_ckpt": ["--ckpt_path", _nan_checkpoint(ckpt, tmp_path / "nan.ckpt")],
        "torch_file": ["--ckpt_path", tmp_path / "plain.pt"],
        "ckpt_in_config": ["--config", config],
        "folder_ckpt": ["--ckpt_path", tmp_path / "dir.jsonl"],
    }[case]
    rc, _, err = run_main(*small_fit(tmp_path, "--trainer.max_epochs", 1, *extra),
                          capsys=capsys)
    assert rc == 2 and message in err, err[-2000:]
    assert "Traceback" not in err and err.count("error:") == 1, err[-2000:]
    assert not list((tmp_path / "logs").rglob("*.ckpt"))
    assert not (tmp_path / "marker").exists()


def test_unreadable_data_file_is_one_line(tmp_path, capsys, monkeypatch):
    path = tmp_path / "secret.jsonl"
    path.write_text('{"input": "a", "target": "b"}\n')
    path.chmod(0)
    original = Path.read_bytes

    def read_bytes(self):  # as root, chmod 0 does not stop reading: refuse here too
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return original(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    rc, _, err = run_main(*small_fit(tmp_path, "--data.train_file", path), capsys=capsys)
    assert rc == 2 and "error: " in err and "Permission denied" in err, err[-2000:]
    assert "Traceback" not in err


def test_full_disk_while_saving_is_one_line_and_debug_shows_the_traceback(
        tmp_path, capsys, monkeypatch):
    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    args = small_fit(tmp_path, "--trainer.max_epochs", 1, "--model.model.hidden", 16,
                     "--model.model.heads", 2)
    rc, _, err = run_main(*args, capsys=capsys)
    assert rc == 2 and "error: no space left on device while writing" in err, err[-2000:]
    assert "Traceback" not in err
    assert not [p for p in tmp_path.rglob("*") if p.suffix in (".ckpt", ".tmp")]
    from pyg_grapheme.training.cli import main

    with pytest.raises(OSError, match="No space left"):
        main([str(a) for a in args] + ["--debug"])


def test_diverged_training_is_one_line_and_keeps_the_last_finite_checkpoint(
        tmp_path, capsys, monkeypatch):
    from pyg_grapheme.training.module import GraphemeModule

    original = GraphemeModule.training_step

    def diverging(self, batch, batch_idx):
        if self.current_epoch == 1:
            raise FloatingPointError("train loss is not finite (nan)")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(GraphemeModule, "training_step", diverging)
    rc, _, err = run_main(*small_fit(tmp_path, "--trainer.max_epochs", 3,
                                     "--model.model.hidden", 16, "--model.model.heads", 2),
                          capsys=capsys)
    assert rc == 2 and "error: train loss is not finite (nan): training diverged" in err
    assert "Traceback" not in err
    last = next(tmp_path.rglob("last.ckpt"))
    assert torch.load(last, weights_only=True)["epoch"] == 0


def test_old_flat_checkpoint_through_the_cli(tmp_path, capsys):
    """``--ckpt_path`` with a checkpoint of the old flat hyperparameters (hidden, lr, ...):
    translated to the network/optimizer configs, so predict answers with its network."""
    import lightning as L

    from pyg_grapheme.nn import GraphTransformNet
    from pyg_grapheme.training import GraphemeModule

    small = {"hidden": 16, "heads": 2, "max_answer_length": 16}
    old = GraphemeModule(GraphTransformNet(**small, **GraphemeModule.network_defaults_before))
    flat = {**small, "lr": 0.01, "betas": (0.9, 0.98), "grad_clip": 0.25, "alpha": 0.0,
            "beta": 0.0, "gamma": 0.0, "reg": 0.05, "ce_weight": 0.0}
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": old.state_dict(), "hyper_parameters": flat,
                "pytorch-lightning_version": L.__version__}, path)
    old.eval()
    want = old.model.generate(["hi"])
    rc, out, err = run_main("predict", "--ckpt_path", path, "--data.predict_texts", '["hi"]',
                            "--trainer.default_root_dir", tmp_path, "--data.root",
                            tmp_path / "cache", capsys=capsys)
    assert rc == 0, err[-2000:]
    from pyg_grapheme.training.cli import escape

    assert out.splitlines() == [f"hi\t{escape(want[0])}"]
