"""The baselines of experiments/baseline_seq2seq.py (GRU and Transformer seq2seq) and the
harness they share with the graph model: bytes round-trip, parameter counts and auto
sizing, greedy decoding, memorisation through the Lightning harness, the CPU budget,
task resolution and the tables."""

from __future__ import annotations

import importlib.util
import math
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

_PATH = Path(__file__).resolve().parents[1] / "experiments" / "baseline_seq2seq.py"
GRAPH_PARAMS = 642_180  # a sizing target (an earlier GraphTransformNet; the current one is ~1.25M)


@pytest.fixture(scope="module")
def bl():
    # experiments/ is not a package: load the script as a module.
    spec = importlib.util.spec_from_file_location("baseline_seq2seq", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


PAIRS = [("hi", "yo"), ("cat?", "🐱"), ("2+2", "4"), ("sky", "blue")]


def _task(bl, pairs, memorise=True):
    return bl.TaskData("tiny", {}, dict.fromkeys(("train", "val", "test"), pairs),
                       memorise=memorise)


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


def test_gru_parameter_count_and_matching(bl):
    assert bl.count_parameters(bl.Seq2Seq(128, 64)) == 372_163  # the anchors' size
    for hidden, embed in ((8, 4), (96, 64), (200, 32)):
        count = bl.count_parameters(bl.Seq2Seq(hidden, embed))
        assert bl.seq2seq_parameters(hidden, embed) == count
        assert bl.gru_hidden_for(count, embed) == hidden


def test_transformer_parameter_count_and_auto_size(bl):
    for dim, ff, layers, max_pos in ((8, None, 1, 10), (32, 48, 2, 40), (100, None, 2, 64)):
        model = bl.TransformerSeq2Seq(dim, ff, 4, layers, layers, max_pos)
        assert bl.count_parameters(model) == bl.transformer_parameters(
            dim, ff, layers, layers, max_pos)
    for target, max_pos in ((GRAPH_PARAMS, 64), (GRAPH_PARAMS, 128), (300_000, 40)):
        dim = bl.transformer_dim_for(target, 4, 2, 2, max_pos)
        model = bl.TransformerSeq2Seq(dim, None, 4, 2, 2, max_pos)
        assert dim % 4 == 0
        assert abs(bl.count_parameters(model) / target - 1) <= 0.05


def test_auto_size_through_train_transformer(bl):
    # dim=0: the table is sized from the data, then the width matches the count.
    data = _task(bl, PAIRS)
    result, model = bl.train_transformer(data, budget_s=0.01, max_epochs=1, dim=0,
                                         graph_params=GRAPH_PARAMS, log=None)
    assert model.max_pos == bl.transformer_max_pos(data, bl.max_answer_len(PAIRS))
    assert abs(result.params / GRAPH_PARAMS - 1) <= 0.05


def test_greedy_stops_at_eos_and_respects_max_len(bl):
    torch.manual_seed(0)
    model = bl.TransformerSeq2Seq(16, heads=4, max_pos=32, dropout=0.0).eval()
    src = torch.tensor([[1, 2, 3, bl.PAD], [4, 5, 6, 7]])
    src_len = torch.tensor([3, 4])
    # Untrained: nothing forces EOS, so every row runs to the limit.
    with torch.no_grad():
        model.out.bias.fill_(0.0)
        model.out.bias[65] = 100.0  # always "A"
    out = model.greedy(src, src_len, max_len=5)
    assert [len(r) for r in out] == [5, 5] and out[0] == [65] * 5
    # EOS always wins: one step, then stop (batched: every row done).
    with torch.no_grad():
        model.out.bias[bl.EOS] = 1000.0
    assert model.greedy(src, src_len, max_len=5) == [[bl.EOS], [bl.EOS]]
    gru = bl.Seq2Seq(8, 4).eval()
    with torch.no_grad():
        gru.out.bias.fill_(0.0)
        gru.out.bias[bl.EOS] = 1000.0
    assert gru.greedy(src, src_len, max_len=5) == [[bl.EOS], [bl.EOS]]
    with torch.no_grad():
        gru.out.bias[bl.EOS] = -1000.0
    assert all(len(r) == 3 for r in gru.greedy(src, src_len, max_len=3))


def test_too_long_question_does_not_crash(bl):
    model = bl.TransformerSeq2Seq(16, heads=4, max_pos=8, dropout=0.0).eval()
    module = bl.Seq2SeqModule(model, max_len=12)  # longer than the table too
    with pytest.warns(UserWarning, match="position table"):
        answers = module.answer(["a question far longer than eight bytes", ""])
    assert len(answers) == 2
    logits = model(torch.randint(0, 256, (2, 20)), torch.tensor([20, 20]),
                   torch.full((2, 3), bl.BOS))
    assert logits.shape == (2, 3, bl.VOCAB) and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ["gru", "transformer"])
def test_memorises_four_pairs_through_the_harness(bl, name):
    torch.set_num_threads(1)
    data = _task(bl, PAIRS)
    if name == "gru":
        result, model = bl.train_gru(data, budget_s=20, max_epochs=400, hidden=32, embed=16,
                                     dropout=0.0, batch_size=4, lr=1e-2, log=None)
    else:
        result, model = bl.train_transformer(data, budget_s=20, max_epochs=400, dim=32,
                                             dropout=0.0, batch_size=4, lr=3e-3, log=None)
    assert result.exact == {"train": 1.0, "val": 1.0, "test": 1.0}
    assert result.cer["test"] == 0.0
    assert result.to_perfect is not None and result.to_perfect == result.epochs
    assert result.best_epoch == result.to_perfect  # the checkpoint is the perfect epoch
    assert result.params == bl.count_parameters(model)
    assert result.cpu_s < 20


def test_budget_callback_stops_a_trainer(bl):
    torch.set_num_threads(1)
    pairs = [(f"q{i} " * 5, f"a{i}") for i in range(40)]
    module = bl.Seq2SeqModule(bl.Seq2Seq(16, 8), max_len=6)
    dm = bl.ByteDataModule(pairs, pairs[:8], batch_size=4)
    start = time.process_time()
    stats = bl.fit(module, dm, budget_s=0.5, log=None)
    assert 0.5 <= stats.cpu_s < 3.0
    assert time.process_time() - start < 6.0
    assert stats.epochs >= 1 and stats.to_perfect is None


def test_best_checkpoint_keeps_the_best_epoch(bl):
    cb = bl.BestCheckpoint()
    module = torch.nn.Linear(1, 1)

    class T:  # the two trainer attributes the callback reads
        sanity_checking = False
        callback_metrics: dict = {}
        current_epoch = 0

    for epoch, (value, weight) in enumerate([(0.2, 1.0), (0.5, 2.0), (0.5, 3.0), (0.1, 4.0)]):
        T.current_epoch, T.callback_metrics = epoch, {"val_exact_match": torch.tensor(value)}
        module.weight.data.fill_(weight)
        cb.on_validation_end(T, module)
    cb.restore(module)
    assert cb.best_epoch == 2 and float(module.weight.detach()) == 2.0  # earliest of equal bests


def _r(bl, model, seed, test, to100=None, note=""):
    return bl.Result("math1", model, 1000, 10.0 + 2 * seed, 5 + 2 * seed, to100,
                     exact={"train": 1.0, "val": 0.5, "test": test},
                     cer={"train": 0.0, "val": 0.1, "test": 0.2}, seed=seed, note=note)


def test_format_table(bl):
    table = bl.format_table([_r(bl, "gru", 0, 0.5, 3), _r(bl, "gru", 1, 0.7),
                             _r(bl, "graph", 0, 0.25, note="failed: boom | x")])
    lines = table.splitlines()
    assert lines[0] == bl.HEAD and len(lines) == 4
    assert lines[2].startswith("| math1 | gru | 0,1 | 1,000 | 11 ± 1 | 6 ± 1 | 3 (1/2) | ")
    assert f"0.600 ± {math.sqrt(0.02):.3f}" in lines[2]
    assert "failed: boom / x" in lines[3]
    one = bl.format_table([_r(bl, "transformer", 0, 0.5)]).splitlines()[2]
    assert one == ("| math1 | transformer | 0 | 1,000 | 10 | 5 | - | 1.000 | 0.500 | 0.500 "
                   "| 0.200 |")
    ex = _r(bl, "gru", 0, 0.5)
    ex.examples = {"test": [("2+2", "4", "4"), ("1+1", "3", "2")]}
    assert "WRONG" in bl.format_examples([ex]) and "ok" in bl.format_examples([ex])


def test_cli_prints_table_and_json(bl, tmp_path, capsys):
    out = tmp_path / "r.json"
    results = bl.main(["--task", "kindergarten", "--models", "gru,transformer",
                       "--budget-s", "0.5", "--gru-hidden", "16", "--tf-dim", "16",
                       "--sizes", "6", "6", "6", "--data-dir", str(tmp_path),
                       "--out", str(out)])
    text = capsys.readouterr().out
    assert "torch threads: 1" in text
    assert "| kindergarten | gru | 0 |" in text and "| kindergarten | transformer | 0 |" in text
    assert [r.model for r in results] == ["gru", "transformer"]
    assert all(r.epochs >= 1 and len(r.examples["test"]) == 4 for r in results)
    assert out.exists() and '"results"' in out.read_text()


def test_explicit_files_and_sizes(bl, tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text('{"input": "a", "target": "b"}\n{"input": "c", "target": "d"}\n'
                     '{"input": "e", "target": "f"}\n')
    data = bl.load_files("mine", train, None, None, tmp_path, sizes=(2, 1, 1))
    assert [len(data.pairs[s]) for s in bl.SPLITS] == [2, 1, 1]
    assert bl.read_pairs(data.files["train"]) == [("a", "b"), ("c", "d")]
    assert not data.memorise  # validation is no longer the training set
    assert bl.load_files("mine", train, None, None, tmp_path).memorise
    assert bl.load_files("mine", train, None, None, tmp_path, sizes=(2, 2, 2)).memorise
    assert not bl.load_task("kindergarten", tmp_path, sizes=(10, 5, 5)).memorise
    assert bl.load_task("kindergarten", tmp_path, sizes=(5, 5, 5)).memorise


def test_generated_task_goes_through_the_package(bl, tmp_path, monkeypatch):
    from pyg_grapheme.data import curriculum

    calls = []

    def generate_task(name, seed, sizes):
        calls.append((name, seed, sizes))
        if name != "sort":
            raise ValueError(f"unknown task {name!r}")
        rows = [{"input": f"sort {i}{i + 1}", "target": f"{i}{i + 1}"} for i in range(6)]
        return {"train": rows[:3], "val": rows[3:5], "test": [("sort 9", "9")]}

    monkeypatch.setattr(curriculum, "generate_task", generate_task, raising=False)
    data = bl.load_task("sort", tmp_path, seed=2, sizes=(3, 2, 1))
    assert calls == [("sort", 2, (3, 2, 1))] and not data.memorise
    assert data.pairs["test"] == [("sort 9", "9")] and len(data.pairs["train"]) == 3
    assert bl.read_pairs(data.files["val"]) == data.pairs["val"]  # the graph side's files
    with pytest.raises(SystemExit, match="cannot generate task 'rounding'"):
        bl.load_task("rounding", tmp_path)


def test_unknown_generated_task_fails_clearly(bl, tmp_path):
    with pytest.raises(SystemExit, match="no_such_task"):
        bl.load_task("no_such_task", tmp_path)


def test_math_task_splits_are_disjoint(bl, tmp_path):
    data = bl.load_task("math1", tmp_path)
    sizes = {s: len(p) for s, p in data.pairs.items()}
    assert sizes == {"train": 960, "val": 120, "test": 120}
    questions = [{q for q, _ in data.pairs[s]} for s in ("train", "val", "test")]
    assert not (questions[0] & questions[1]) and not (questions[0] & questions[2])
    assert all(p.exists() for p in data.files.values())
    cut = bl.load_task("math1", tmp_path, sizes=(10, 5, 5))
    assert [len(cut.pairs[s]) for s in bl.SPLITS] == [10, 5, 5]


@pytest.mark.slow
def test_graph_side_runs_under_budget(bl, tmp_path):
    # Lightning start-up and the PyG dataset cache make this slower than the GRU tests.
    torch.set_num_threads(1)
    data = bl.load_task("kindergarten", tmp_path)
    result = bl.train_graph(data, budget_s=5.0, max_epochs=3, hidden=32, cache_dir=tmp_path,
                            log=None)
    assert result.model == "graph" and 1 <= result.epochs <= 3
    # the canvas is sized from the data (answer_slots), not graph_parameters' default 32
    slots = bl.answer_slots(data)
    assert result.params == bl.count_parameters(bl.build_graph(32, max_answer_length=slots).model)
    assert set(result.exact) == {"train", "val", "test"}
    assert all(0.0 <= v <= 1.0 for v in result.exact.values())



def test_build_graph_routes_keywords_to_network_loss_and_module(bl):
    """``--graph-kwargs``: model.NAME -> GraphTransformNet, loss.NAME -> StructuralLoss
    (the structural term on), the rest -> GraphemeModule; a bare network argument is
    refused with the spelling that works."""
    module = bl.build_graph(32, lr=3e-3, **bl.parse_kwargs(
        "model.block=pre_ln,loss.alpha=2.0,ce_weight=1"))
    assert module.model.block == "pre_ln" and module.model.hidden == 32
    assert module.loss.alpha == 2.0 and module.hparams.ce_weight == 1
    assert module.configure_optimizers().defaults["lr"] == 3e-3
    assert bl.build_graph(32).loss is None
    # the task's canvas, unless the kwargs name one
    assert bl.build_graph(32, max_answer_length=8).model.max_answer_length == 8
    named = bl.build_graph(32, max_answer_length=8, **{"model.max_answer_length": 5})
    assert named.model.max_answer_length == 5
    with pytest.raises(ValueError, match="'block' is a GraphTransformNet argument: model.block"):
        bl.build_graph(32, block="gps")


def test_baselines_are_sized_to_the_graph_model_the_flags_build(bl):
    """``--graph-kwargs`` that add parameters (a GRU layer) size the baselines too: equal
    parameters means equal to the graph model that is run."""
    plain = bl.graph_parameters(32)
    grown = bl.graph_parameters(32, bl.parse_kwargs("model.encoder_gru=True"))
    assert grown - plain == 2 * 3 * (32 * 16 + 16 * 16 + 2 * 16) + 32  # two GRUs, a gate
    assert bl.count_parameters(bl.build_graph(32, **{"model.encoder_gru": True}).model) == grown


def test_fused_adam_for_every_model_and_labelled(bl, tmp_path):
    """``--fused-adam`` gives all three models torch's fused Adam (the same optimizer for
    everyone, as the harness requires) and labels their rows; without it, torch's default."""
    import seq2seq_models

    assert bl.build_graph(32, fused_adam=True).configure_optimizers().defaults["fused"]
    assert not bl.build_graph(32).configure_optimizers().defaults["fused"]
    module = seq2seq_models.Seq2SeqModule(bl.build_gru(16, 8, 0.0), fused_adam=True)
    assert module.configure_optimizers().defaults["fused"]
    assert not seq2seq_models.Seq2SeqModule(bl.build_gru(16, 8, 0.0)).configure_optimizers(
    ).defaults["fused"]
    results = bl.main(["--task", "kindergarten", "--models", "gru,transformer,graph",
                       "--budget-s", "0.5", "--gru-hidden", "16", "--tf-dim", "16",
                       "--graph-hidden", "16", "--graph-kwargs", "model.heads=2",
                       "--sizes", "6", "6", "6", "--data-dir", str(tmp_path), "--fused-adam"])
    assert [r.model for r in results] == ["gru[fused Adam]", "transformer[fused Adam]",
                                          "graph[model.heads=2][fused Adam]"]


def test_ema_validates_keeps_and_returns_the_averaged_weights(bl):
    """``fit(..., ema=d)``: each validation sees the moving average of the weights, the
    best checkpoint holds the average it scored, and training goes on from the raw
    weights. A parameter that SGD moves by -1 per step (4 steps an epoch), d = 0.5:
    the average is w_1 = -1 after the first step, then 0.5 avg + 0.5 w_k. The metric
    peaks at the first epoch, so what the fit returns is that epoch's average, not the
    last one (which ``WeightAveraging.on_train_end`` leaves in the module)."""
    torch.set_num_threads(1)

    class Toy(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.register_buffer("table", torch.arange(256, dtype=torch.uint8))
            self.seen: list[float] = []
            self.tables_seen: list[torch.Tensor] = []

        def training_step(self, batch, batch_idx):
            return self.w.sum()

        def validation_step(self, batch, batch_idx):
            self.seen.append(float(self.w))
            self.tables_seen.append(self.table.clone())
            self.log("val_exact_match", -(self.w.sum() + 3).abs(), batch_size=1)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=1.0)

        def train_dataloader(self):
            return torch.utils.data.DataLoader(list(range(4)), batch_size=1)

        def val_dataloader(self):
            return torch.utils.data.DataLoader([0], batch_size=1)

    avg, expected = 0.0, []
    for k in range(1, 9):  # the raw weight after step k is -k
        avg = -1.0 if k == 1 else 0.5 * avg + 0.5 * -k
        if k % 4 == 0:
            expected.append(avg)
    module = Toy()
    stats = bl.fit(module, None, budget_s=1e6, max_epochs=2, log=None, ema=0.5)
    assert module.seen == pytest.approx(expected)  # [-3.125, -7.0078125]
    assert stats.best_epoch == 1 and float(module.w.detach()) == pytest.approx(expected[0])
    plain = Toy()
    stats = bl.fit(plain, None, budget_s=1e6, max_epochs=2, log=None)
    assert plain.seen == pytest.approx([-4.0, -8.0])
    assert stats.best_epoch == 1 and float(plain.w.detach()) == pytest.approx(-4.0)
    # Buffers are not averaged: an integer one would be truncated (at 0.9, 3 -> 2).
    module = Toy()
    bl.fit(module, None, budget_s=1e6, max_epochs=2, log=None, ema=0.9)
    for table in [*module.tables_seen, module.table]:
        assert torch.equal(table, torch.arange(256, dtype=torch.uint8))


def test_ema_reaches_every_model_and_labels_it(bl, tmp_path, monkeypatch):
    decays = []
    fit = bl.fit

    def spy(*args, **kwargs):
        decays.append(kwargs.get("ema"))
        return fit(*args, **kwargs)

    monkeypatch.setattr(bl, "fit", spy)
    results = bl.main(["--task", "kindergarten", "--models", "gru,transformer,graph",
                       "--budget-s", "0.5", "--gru-hidden", "16", "--tf-dim", "16",
                       "--graph-hidden", "16", "--graph-kwargs", "model.heads=2",
                       "--sizes", "6", "6", "6", "--data-dir", str(tmp_path), "--ema", "0.9"])
    assert [r.model for r in results] == ["gru[EMA 0.9]", "transformer[EMA 0.9]",
                                          "graph[model.heads=2][EMA 0.9]"]
    assert decays == [0.9, 0.9, 0.9]
    with pytest.raises(SystemExit):
        bl.main(["--task", "kindergarten", "--ema", "1.0"])
