"""The expression task through the CLI: a tiny fit logs val_graph_exact_match; the
accuracy goal (slow)."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch_geometric.data import Batch
from torch_geometric.loader import DataLoader

from pyg_grapheme.data.expression import expression_pairs
from pyg_grapheme.data.graphemes import graphs_to_texts
from pyg_grapheme.data.pair import FOLLOW_BATCH, split_pair_batch
from pyg_grapheme.nn.edge_head import all_pairs
from pyg_grapheme.nn.head import one_hot_bytes
from pyg_grapheme.training.expression_module import score_expressions

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "experiments" / "expression.yaml"


def cli(*args, cwd, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "pyg_grapheme", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=env)
    return proc.returncode, proc.stdout, proc.stderr


def _rows(root: Path) -> list[dict]:
    with open(next(root.rglob("metrics.csv"))) as fh:
        return list(csv.DictReader(fh))


def _perfect_prediction(targets: Batch, swap: int | None = None) -> Batch:
    """The targets as a prediction, with a dropped (keep 0) node after each graph's
    root, every ordered pair scored; ``swap`` reverses one target edge of graph 0."""
    xs, keep, batch, where = [], [], [], {}
    onehot = one_hot_bytes(targets).x
    for g in range(targets.num_graphs):
        nodes = (targets.batch == g).nonzero().view(-1).tolist()
        for k, node in enumerate(nodes):
            if k == 1:
                xs.append(torch.zeros(1, 8, 256))
                keep.append(0.0)
                batch.append(g)
            where[node] = len(keep)
            xs.append(onehot[node:node + 1])
            keep.append(1.0)
            batch.append(g)
    batch = torch.tensor(batch)
    pairs = all_pairs(batch)
    edges = {(where[s], where[d]) for s, d in targets.edge_index.t().tolist()}
    if swap is not None:
        s, d = targets.edge_index[:, swap].tolist()
        edges = (edges - {(where[s], where[d])}) | {(where[d], where[s])}
    weight = torch.tensor([float(tuple(p) in edges) for p in pairs.t().tolist()])
    pred = Batch(x=torch.cat(xs), keep=torch.tensor(keep), edge_index=pairs,
                 edge_weight=weight, batch=batch)
    pred._num_graphs = targets.num_graphs
    return pred


def test_scores_of_a_perfect_and_of_a_wrong_prediction():
    pairs = expression_pairs(1, "val")[:3] + expression_pairs(2, "val")[:3]
    inputs, targets = split_pair_batch(
        next(iter(DataLoader(pairs, batch_size=6, follow_batch=FOLLOW_BATCH))))
    exact, texts = score_expressions(_perfect_prediction(targets), targets)
    assert exact == [True] * 6
    assert texts == graphs_to_texts(inputs)
    exact, texts = score_expressions(_perfect_prediction(targets, swap=0), targets)
    assert exact == [False] + [True] * 5 and texts[0] != graphs_to_texts(inputs)[0]


def test_expression_config_trains_through_the_cli(tmp_path):
    rc, _, err = cli("fit", "--config", CONFIG, "--trainer.default_root_dir", "out",
                     "--trainer.max_epochs", 2, "--trainer.limit_train_batches", 3,
                     "--trainer.limit_val_batches", 2, "--trainer.enable_progress_bar", "false",
                     "--data.batch_size", 8, "--data.sizes", "{1: [24, 8, 8], 2: [24, 8, 8]}",
                     "--model.model.hidden", 16, "--model.model.heads", 2,
                     cwd=tmp_path)
    assert rc == 0, err[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # default_root_dir decides
    rows = [r for r in _rows(tmp_path / "out") if r.get("val_graph_exact_match")]
    assert [int(r["epoch"]) for r in rows] == [0, 1]  # once per validation epoch
    for r in rows:
        assert 0.0 <= float(r["val_graph_exact_match"]) <= 1.0
        assert r["val_text_exact_match"] != ""
    config = next((tmp_path / "out").rglob("config.yaml")).read_text()
    assert "pyg_grapheme.training.ExpressionModule" in config


@pytest.mark.slow
def test_expression_goal_on_held_out_levels(tmp_path):
    """The full config: >= 0.95 graph exact match on level 1 and level 2 validation."""
    rc, _, err = cli("fit", "--config", CONFIG, "--trainer.default_root_dir", "out",
                     "--trainer.enable_progress_bar", "false", cwd=tmp_path, timeout=1200)
    assert rc == 0, err[-3000:]
    rows = [r for r in _rows(tmp_path / "out") if r.get("val_graph_exact_match_level2")]
    best = max(rows, key=lambda r: float(r["val_graph_exact_match"]))
    assert float(best["val_graph_exact_match_level1"]) >= 0.95
    assert float(best["val_graph_exact_match_level2"]) >= 0.95


def test_data_modules_read_sizes_with_string_keys_and_share_loaders():
    """``--data.sizes`` from YAML or the command line arrives with string keys; both
    graph-target data modules honour them (before, the expression module silently used
    its default sizes) and batch through the same loaders."""
    from pyg_grapheme.training.dag_module import DagDataModule
    from pyg_grapheme.training.expression_module import ExpressionDataModule, PairGraphDataModule

    expr = ExpressionDataModule(levels=[1], sizes={"1": [6, 3, 3]}, batch_size=4)
    dag = DagDataModule(levels=[1], sizes={"1": [5, 3, 3]}, batch_size=4)
    assert isinstance(dag, PairGraphDataModule) and isinstance(expr, PairGraphDataModule)
    assert len(expr._dataset("train")) == 6 and len(expr._dataset("val")) == 3
    assert len(dag._dataset("train")) == 5
    assert [b.num_graphs for b in expr.train_dataloader()] == [4, 2]


@pytest.mark.parametrize("kind", ["text", "expression", "dag"])
def test_data_modules_batch_the_same_through_worker_processes(kind, tmp_path):
    """``num_workers=2``: the pairs are pickled to worker processes and collated there;
    the batches are the in-process ones, field by field, in order (the QA data module's
    training batches, unshuffled; the graph-target modules' validation batches)."""
    from pyg_grapheme.training import GraphemeDataModule
    from pyg_grapheme.training.dag_module import DagDataModule
    from pyg_grapheme.training.expression_module import ExpressionDataModule

    batches = {}
    for workers in (0, 2):
        if kind == "text":
            dm = GraphemeDataModule(train_file="kindergarten", batch_size=30, shuffle=False,
                                    root=str(tmp_path / "cache"), num_workers=workers)
            dm.prepare_data()
            batches[workers] = list(dm.train_dataloader())
        else:
            cls = ExpressionDataModule if kind == "expression" else DagDataModule
            dm = cls(levels=[1], sizes={"1": [4, 7, 3]}, batch_size=3, num_workers=workers)
            batches[workers] = list(dm.val_dataloader())
    sizes = [30, 30, 5] if kind == "text" else [3, 3, 1]  # kindergarten: 65 pairs
    assert [b.num_graphs for b in batches[2]] == sizes
    for ours, theirs in zip(batches[0], batches[2], strict=True):
        assert ours.keys() == theirs.keys()
        for key in ours.keys():
            a, b = ours[key], theirs[key]
            if isinstance(a, torch.Tensor):
                assert torch.equal(a, b), key
            else:
                assert a == b, key
