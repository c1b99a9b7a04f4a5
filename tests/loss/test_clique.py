"""The O(n + E) clique/density term: exact expectations by enumeration as the oracle."""

import itertools

import pytest
import torch
from torch_geometric.data import Batch, Data

from pyg_grapheme.loss import clique_loss, clique_statistics


def dag(labels, edges, weights=None, masses=None, L=3, dtype=torch.float64):
    x = torch.nn.functional.one_hot(torch.tensor(labels), L).to(dtype)
    ei = torch.tensor(edges, dtype=torch.long).t().reshape(2, -1)
    d = Data(x=x, edge_index=ei, num_nodes=len(labels))
    if weights is not None:
        d.edge_weight = torch.tensor(weights, dtype=dtype)
    if masses is not None:
        d.node_weight = torch.tensor(masses, dtype=dtype)
    return d


def brute_force(d):
    """Expected per-label out-, in- and wedge counts by enumerating every edge subset
    (edge e present with probability w_e, independently; node masses 1)."""
    E = d.edge_index.size(1)
    labels = d.x.argmax(1)
    H = torch.zeros(3, d.x.size(1), dtype=torch.float64)
    for present in itertools.product([0, 1], repeat=E):
        prob = 1.0
        for e, on in enumerate(present):
            prob *= float(d.edge_weight[e]) if on else 1 - float(d.edge_weight[e])
        edges = [tuple(d.edge_index[:, e].tolist()) for e in range(E) if present[e]]
        for v in range(d.num_nodes):
            outs = sum(1 for s, _ in edges if s == v)
            ins = sum(1 for _, t in edges if t == v)
            wedge = ins * outs + outs * (outs - 1) / 2 + ins * (ins - 1) / 2
            H[:, labels[v]] += prob * torch.tensor([outs, ins, wedge], dtype=torch.float64)
    return H


def test_statistics_are_expected_counts_under_independent_edges():
    d = dag([0, 1, 2, 1, 0], [(0, 1), (0, 2), (1, 2), (1, 3), (2, 4), (3, 4)],
            weights=[0.9, 0.3, 0.5, 0.7, 0.2, 1.0])
    H = clique_statistics(d.x, d.edge_index, edge_weight=d.edge_weight)
    torch.testing.assert_close(H[0], brute_force(d))


def test_hard_chain_counts():
    d = dag([0, 1, 2, 0], [(0, 1), (1, 2), (2, 3)])
    H = clique_statistics(d.x, d.edge_index)[0]
    torch.testing.assert_close(H[0], torch.tensor([1.0, 1, 1], dtype=torch.float64))  # out
    torch.testing.assert_close(H[1], torch.tensor([1.0, 1, 1], dtype=torch.float64))  # in
    torch.testing.assert_close(H[2], torch.tensor([0.0, 1, 1], dtype=torch.float64))  # paths


def test_one_edge_edit_changes_the_degree_part_by_one():
    g = dag([0, 1, 2, 0], [(0, 1), (1, 2), (2, 3)])
    h = dag([0, 1, 2, 0], [(0, 1), (1, 2), (2, 3), (0, 3)])
    Hg = clique_statistics(g.x, g.edge_index)[0]
    Hh = clique_statistics(h.x, h.edge_index)[0]
    assert float(0.5 * (Hg[:2] - Hh[:2]).abs().sum()) == pytest.approx(1.0)
    assert float(clique_loss(g, h)) > 1.0  # the wedge part sees the new triangle
    assert float(clique_loss(g, g)) == 0.0


def test_node_masses_scale_nodes_and_their_edges():
    d = dag([0, 1], [(0, 1)], weights=[1.0], masses=[1.0, 0.5])
    H = clique_statistics(d.x, d.edge_index, edge_weight=d.edge_weight,
                          node_weight=d.node_weight)[0]
    # The edge counts a_0 * w * a_1 = 0.5 for the source's out- and the target's in-degree.
    assert float(H[0].sum()) == pytest.approx(0.5) and float(H[1].sum()) == pytest.approx(0.5)


def test_gradcheck_wrt_edge_weights_node_masses_and_features():
    g = dag([0, 1, 2, 1], [(0, 1), (0, 2), (1, 2), (2, 3)], weights=[0.9, 0.3, 0.5, 0.7],
            masses=[1.0, 0.7, 1.2, 0.9])
    h = Batch.from_data_list([dag([0, 2, 1], [(0, 1), (1, 2)])])
    x = (g.x * 0.8 + 0.05).requires_grad_()
    w = g.edge_weight.clone().requires_grad_()
    a = g.node_weight.clone().requires_grad_()

    def f(x, w, a):
        p = Data(x=x, edge_index=g.edge_index, edge_weight=w, node_weight=a, num_nodes=4)
        return clique_loss(p, h, reduction="sum")

    assert torch.autograd.gradcheck(f, (x, w, a))


def test_batched_slots_and_empty_graphs():
    gs = [dag([0, 1, 2], [(0, 1), (1, 2)]), Data(x=torch.zeros(0, 3, dtype=torch.float64),
                                                 edge_index=torch.empty(2, 0, dtype=torch.long),
                                                 num_nodes=0), dag([1], [])]
    b = Batch.from_data_list(gs)
    H = clique_statistics(b.x, b.edge_index, b.batch, b.num_graphs)
    assert H.shape == (3, 3, 3) and H[1].abs().sum() == 0 and H[2].abs().sum() == 0
    slots = b.x.unsqueeze(1).expand(-1, 2, -1)  # two identical slots count once
    H2 = clique_statistics(slots, b.edge_index, b.batch, 3)
    torch.testing.assert_close(H2, H.repeat(1, 1, 2) / 2)
    assert clique_loss(b, b, reduction="mean") == 0
