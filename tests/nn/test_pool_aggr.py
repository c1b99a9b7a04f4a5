"""The pool's reduce step as a PyG aggregation (``aggr: str | Aggregation``), the
``reduce=`` alias, old state dicts, and the names the split into nn/pool/ must keep."""

from __future__ import annotations

import importlib

import pytest
import torch
from torch_geometric.nn.aggr import MeanAggregation, SoftmaxAggregation
from torch_geometric.utils import scatter

from pyg_grapheme.nn import ThresholdMergePool
from tests.nn.test_pool_api import grid_batch


@pytest.mark.parametrize("name", ["mean", "max", "sum", "attention"])
def test_reduce_is_an_alias_of_aggr(name):
    b = grid_batch()
    torch.manual_seed(0)
    old = ThresholdMergePool(6, reduce=name)
    torch.manual_seed(0)
    new = ThresholdMergePool(6, aggr=name)
    assert repr(old) == repr(new) and old.reduce == new.aggr == name
    a, c = old(b.x, b.edge_index, b.batch), new(b.x, b.edge_index, b.batch)
    assert torch.equal(a.x, c.x) and torch.equal(a.cluster, c.cluster)


def test_aggr_takes_a_pyg_aggregation_or_its_name():
    b = grid_batch()
    for aggr in ("min", "softmax", SoftmaxAggregation(learn=True), MeanAggregation()):
        pool = ThresholdMergePool(6, aggr)
        out = pool(b.x, b.edge_index, b.batch)
        assert out.x.shape == (int(out.cluster.max()) + 1, 6)
        if aggr == "min":  # the oracle: PyG's scatter over the clusters
            torch.testing.assert_close(out.x, scatter(b.x, out.cluster, 0, reduce="min"))
    learn = ThresholdMergePool(6, SoftmaxAggregation(learn=True))
    assert any(n.startswith("aggr_module.") for n, _ in learn.named_parameters())
    x = b.x.clone().requires_grad_()
    learn(x, b.edge_index, b.batch).x.sum().backward()
    assert learn.aggr_module.t.grad is not None and x.grad is not None


def test_bad_aggr_and_reduce_raise_naming_the_argument():
    with pytest.raises(ValueError, match="reduce must be one of"):
        ThresholdMergePool(6, reduce="min")  # the alias keeps its four names
    with pytest.raises(ValueError, match="not both"):
        ThresholdMergePool(6, aggr="max", reduce="sum")
    with pytest.raises(ValueError, match="Could not resolve 'median_of_means'"):
        ThresholdMergePool(6, aggr="median_of_means")


def test_multidimensional_features_aggregate_flattened():
    b = grid_batch()
    x = b.x.view(-1, 3, 2)
    for aggr in ("mean", "max"):
        pool = ThresholdMergePool(6, aggr)
        out = pool(x, b.edge_index, b.batch)
        assert out.x.shape == (out.cluster.max() + 1, 3, 2)
        flat = pool(b.x, b.edge_index, b.batch)
        torch.testing.assert_close(out.x.flatten(1), flat.x)


def test_attention_state_dict_of_the_old_layout_loads():
    """The gate was ``att.weight``/``att.bias`` before the PyG aggregation held it."""
    pool = ThresholdMergePool(6, reduce="attention")
    state = pool.state_dict()
    assert {"aggr_module.gate_nn.weight", "aggr_module.gate_nn.bias"} <= set(state)
    old = {k.replace("aggr_module.gate_nn.", "att."): v + 1.0 for k, v in state.items()}
    fresh = ThresholdMergePool(6, reduce="attention")
    fresh.load_state_dict(old)  # strict: no missing or unexpected key
    assert torch.equal(fresh.att.weight, state["aggr_module.gate_nn.weight"] + 1.0)
    assert fresh.att is fresh.aggr_module.gate_nn
    assert ThresholdMergePool(6).att is None
    # the default (mean) pool adds no key: GraphTransformNet checkpoints are unchanged
    assert set(ThresholdMergePool(6).state_dict()) == {"theta"}


OLD_NAMES = ["ThresholdMergePool", "PoolOutput", "UnpoolInfo", "edge_similarity",
             "merge_logit", "standardize_per_graph", "forced_merges", "coarsen_edges",
             "REDUCE", "EDGE_REDUCE", "SIMILARITY", "SCORE_NORM", "ESTIMATOR"]


def test_names_stay_importable_from_where_they_were():
    shim = importlib.import_module("pyg_grapheme.nn.merge_pool")
    pool = importlib.import_module("pyg_grapheme.nn.pool")
    nn = importlib.import_module("pyg_grapheme.nn")
    for name in OLD_NAMES:
        assert hasattr(shim, name), name
        if hasattr(pool, name):
            assert getattr(shim, name) is getattr(pool, name)
    for name in ("ThresholdMergePool", "PoolOutput", "UnpoolInfo"):
        assert getattr(nn, name) is getattr(pool, name)


def test_score_function_loss_is_the_functional_one():
    from pyg_grapheme.nn.pool import score_function_loss

    losses = torch.tensor([1.0, 3.0, 2.0], requires_grad=True)
    log_probs = torch.tensor([-0.5, -1.0, -2.0], requires_grad=True)
    a = ThresholdMergePool.score_function_loss(losses, log_probs)
    assert torch.equal(a, score_function_loss(losses, log_probs))
    (g,) = torch.autograd.grad(a, log_probs)
    # advantage of each sample against the mean of the others, over K
    torch.testing.assert_close(g, torch.tensor([-1.5, 1.5, 0.0]) / 3)
    with pytest.raises(ValueError, match="at least 2 samples"):
        score_function_loss(losses[:1], log_probs[:1])
