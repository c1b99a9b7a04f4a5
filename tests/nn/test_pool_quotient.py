"""pyg_grapheme.nn.pool.quotient: the quotient graph against scipy (components) and
PyG (coalesce), with each components method the layer can be given."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components as scipy_cc
from torch_geometric.utils import coalesce, remove_self_loops

from pyg_grapheme.nn import ThresholdMergePool
from pyg_grapheme.nn.pool import quotient
from tests.nn.test_pool_api import grid_batch


@pytest.mark.parametrize("method", ["auto", "torch", "scipy"])
def test_quotient_against_scipy_and_pyg(method):
    g = torch.Generator().manual_seed(1)
    n = 30
    ei = torch.randint(0, n, (2, 60), generator=g)
    kept = torch.rand(60, generator=g) > 0.6
    batch = torch.zeros(n, dtype=torch.long)
    q = quotient(ei, kept, batch, n, method)
    k = ei[:, kept].numpy()
    num, labels = scipy_cc(coo_matrix((np.ones(k.shape[1]), (k[0], k[1])), shape=(n, n)),
                           directed=True, connection="weak")
    assert q.num_clusters == num
    # same partition, numbered by smallest node (scipy numbers by first node too)
    assert torch.equal(q.cluster, torch.from_numpy(labels.astype(np.int64)))
    assert torch.equal(q.size, torch.bincount(q.cluster))
    want, _ = remove_self_loops(coalesce(q.cluster[ei], num_nodes=num))
    assert torch.equal(q.edge_index, want)
    assert torch.equal(q.edge_index[:, q.inverse], q.cluster[ei[:, q.edge_id]])
    assert torch.equal(q.count, torch.bincount(q.inverse, minlength=want.size(1)))


@pytest.mark.parametrize("method", ["torch", "scipy"])
def test_layer_components_option_gives_the_same_pool(method):
    b = grid_batch()
    x = b.x.clone().requires_grad_()
    auto = ThresholdMergePool(6)(x, b.edge_index, b.batch)
    other = ThresholdMergePool(6, components=method)(x, b.edge_index, b.batch)
    for name in ("x", "edge_index", "batch", "cluster", "node_weight", "edge_weight"):
        assert torch.equal(getattr(auto, name), getattr(other, name)), name
    ga = torch.autograd.grad(auto.node_weight.sum() + auto.x.sum(), x)[0]
    go = torch.autograd.grad(other.node_weight.sum() + other.x.sum(), x)[0]
    assert torch.equal(ga, go)
