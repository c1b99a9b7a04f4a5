"""The GRU baseline of experiments/baseline_seq2seq.py: bytes round-trip, the model
memorises a few pairs, the CPU budget is respected, the CLI prints its table."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import pytest
import torch

_PATH = Path(__file__).resolve().parents[1] / "experiments" / "baseline_seq2seq.py"


@pytest.fixture(scope="module")
def bl():
    # experiments/ is not a package: load the script as a module.
    spec = importlib.util.spec_from_file_location("baseline_seq2seq", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


PAIRS = [("hi", "yo"), ("cat?", "🐱"), ("2+2", "4"), ("café", "naïve"), ("sky", "blue")]


def _task(bl, pairs):
    return bl.TaskData("tiny", {}, dict.fromkeys(("train", "val", "test"), pairs), memorise=True)


def test_bytes_round_trip(bl):
    for text in ("", "What colour is snow?", "café naïve 🐱"):
        ids = bl.encode(text)
        assert all(0 <= i < 256 for i in ids)
        assert bl.decode(ids + [bl.EOS, 65, 66]) == text  # stops at EOS
    assert bl.decode([bl.BOS, 0xC3]) == "\ufffd"  # specials dropped, bad UTF-8 replaced


def test_batch_trims_padding(bl):
    data = bl.Tensors.from_pairs(PAIRS)
    src, src_len, tgt_in, tgt_out = data.batch(torch.tensor([0, 2]))
    assert src.shape == (2, 3) and src_len.tolist() == [2, 3]
    assert tgt_in[:, 0].eq(bl.BOS).all()
    assert tgt_out.shape == (2, 3) and tgt_out[1].tolist() == [ord("4"), bl.EOS, bl.PAD]


def test_parameter_count_and_matching(bl):
    assert bl.count_parameters(bl.Seq2Seq(128, 64)) == 372_163  # the anchors' size
    for hidden, embed in ((8, 4), (96, 64), (200, 32)):
        count = bl.count_parameters(bl.Seq2Seq(hidden, embed))
        assert bl.seq2seq_parameters(hidden, embed) == count
        assert bl.gru_hidden_for(count, embed) == hidden


def test_memorises_five_pairs(bl):
    torch.set_num_threads(1)
    result, model = bl.train_gru(
        _task(bl, PAIRS), budget_s=20, max_epochs=300, hidden=64, embed=32,
        batch_size=5, lr=1e-2, log=None,
    )
    assert result.exact == {"train": 1.0, "val": 1.0, "test": 1.0}
    assert result.cer["test"] == 0.0
    assert result.to_perfect is not None and result.to_perfect == result.epochs
    assert result.params == bl.count_parameters(model)


def test_budget_stops_training(bl):
    pairs = [(f"q{i} " * 5, f"a{i}") for i in range(40)]
    task = bl.TaskData("budget", {}, {"train": pairs, "val": pairs[:8], "test": pairs[:8]},
                       memorise=False)
    start = time.process_time()
    result, _ = bl.train_gru(task, budget_s=1.0, hidden=32, embed=16, log=None)
    assert 1.0 <= result.cpu_s < 4.0
    assert time.process_time() - start < 8.0
    assert result.to_perfect is None and result.epochs >= 1


def test_cli_prints_table(bl, tmp_path, capsys):
    results = bl.main(["--task", "kindergarten", "--models", "gru", "--budget-s", "1",
                       "--gru-hidden", "32", "--data-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "torch threads: 1" in out
    assert "| kindergarten | gru |" in out
    assert len(results) == 1 and results[0].epochs >= 1


def test_math_task_splits_are_disjoint(bl, tmp_path):
    data = bl.load_task("math1", tmp_path)
    sizes = {s: len(p) for s, p in data.pairs.items()}
    assert sizes == {"train": 960, "val": 120, "test": 120}
    questions = [{q for q, _ in data.pairs[s]} for s in ("train", "val", "test")]
    assert not (questions[0] & questions[1]) and not (questions[0] & questions[2])
    assert all(p.exists() for p in data.files.values())


@pytest.mark.slow
def test_graph_side_runs_under_budget(bl, tmp_path):
    # Lightning start-up and the PyG dataset cache make this slower than the GRU tests.
    torch.set_num_threads(1)
    data = bl.load_task("kindergarten", tmp_path)
    result = bl.train_graph(data, budget_s=5.0, max_epochs=3, hidden=32, cache_dir=tmp_path,
                            log=None)
    assert result.model == "graph" and 1 <= result.epochs <= 3
    assert result.params == bl.graph_parameters(32)
    assert set(result.exact) == {"train", "val", "test"}
    assert all(0.0 <= v <= 1.0 for v in result.exact.values())
