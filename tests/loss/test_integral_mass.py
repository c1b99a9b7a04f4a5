"""structural_loss(integral_mass=True): the hard graph's nodes (masses rounded, the
straight-through gradient). Oracle: the graph edit distance of the hard graph (unit
costs, networkx), and the loss's own gradient at the rounded masses."""

import networkx as nx
import pytest
import torch
from torch_geometric.data import Batch, Data

from pyg_grapheme.data.dag import dag_graph, parse_dag
from pyg_grapheme.data.expression import label_bytes, node_labels
from pyg_grapheme.loss import structural_loss
from pyg_grapheme.nn.head import one_hot_bytes

OPTS = dict(alpha=1.0, beta=1.0, gamma=0.0, reg=0.05, node_cost="tv")
TEXT = "a=(* 7 12);(- a a)"  # 6 nodes, 6 edges; the body's port "(-" is split below


def _target() -> tuple[Data, list[str], list[list[int]]]:
    t = dag_graph(parse_dag(TEXT))
    return t, node_labels(t.x), t.edge_index.t().tolist()


def _pred(labels: list[str], weights: list[float], edges: list[list[int]],
          dtype=torch.float32) -> Data:
    pred = one_hot_bytes(Data(x=label_bytes(labels), num_nodes=len(labels)))
    pred.x = pred.x.to(dtype)
    pred.edge_index = torch.tensor(edges, dtype=torch.long).t().reshape(2, -1)
    pred.node_weight = torch.tensor(weights, dtype=dtype)
    pred.edge_weight = torch.ones(len(edges), dtype=dtype)
    return pred


def _replace(edges: list[list[int]], node: int, pieces: list[int]) -> list[list[int]]:
    """``edges`` with ``node`` replaced by each of ``pieces`` (each gets all its edges)."""
    out = [e for e in edges if node not in e]
    for q in pieces:
        out += [[s, q] for s, d in edges if d == node] + [[q, d] for s, d in edges if s == node]
    return out


def _ged(labels, weights, edges, t_labels, t_edges) -> float:
    """GED (unit costs) between the hard graph (nodes of mass > 0.5) and the target."""
    def graph(lab, keep, ed):
        g = nx.DiGraph()
        g.add_nodes_from((i, {"label": x}) for i, x in enumerate(lab) if keep[i])
        g.add_edges_from((s, d) for s, d in ed if keep[s] and keep[d])
        return g

    return nx.graph_edit_distance(
        graph(labels, [w > 0.5 for w in weights], edges),
        graph(t_labels, [True] * len(t_labels), t_edges),
        node_match=lambda a, b: a["label"] == b["label"], timeout=20)


def _cases():
    t, labels, edges = _target()
    n, port = len(labels), labels.index("(-")
    drop = [1.0 if i != port else 0.0 for i in range(n)]
    third = [1.0 if i != port else 1 / 3 for i in range(n)]
    return t, labels, edges, {
        "target": (labels, [1.0] * n, edges),
        "port split in 3 of mass 1/3": (labels + ["(-"] * 2, third + [1 / 3] * 2,
                                         _replace(edges, port, [port, n, n + 1])),
        "port split 0.8 / 0.2": (labels + ["(-"], [1.0 if i != port else 0.8 for i in range(n)]
                                 + [0.2], _replace(edges, port, [port, n])),
        "port deleted": (labels, drop, [e for e in edges if port not in e]),
        "port deleted, an edge kept dangling": (labels, drop, edges),
        "port and a leaf deleted": (labels, [w if labels[i] != "7" else 0.0
                                             for i, w in enumerate(drop)],
                                    [e for e in edges if port not in e]),
    }


def test_the_split_node_costs_what_its_hard_graph_is_from_the_target():
    t, t_labels, t_edges, cases = _cases()
    target = one_hot_bytes(t)
    soft, hard, ged = {}, {}, {}
    for name, (labels, w, edges) in cases.items():
        pred = _pred(labels, w, edges)
        soft[name] = float(structural_loss(pred, target, **OPTS))
        hard[name] = float(structural_loss(pred, target, integral_mass=True, **OPTS))
        ged[name] = _ged(labels, w, edges, t_labels, t_edges)
    # the failure the option fixes: fractional masses make the split free
    assert soft["port split in 3 of mass 1/3"] < 1e-2 < ged["port split in 3 of mass 1/3"] == 3
    assert hard["port split in 3 of mass 1/3"] > 2.5
    for name in cases:  # with 0/1 labels and unit costs the value is the GED
        assert hard[name] == pytest.approx(ged[name], abs=0.1), name
    order = sorted(cases, key=hard.get)
    assert [ged[k] for k in order] == sorted(ged.values())


def test_default_is_unchanged_and_unit_masses_are_untouched():
    t, labels, edges, cases = _cases()
    target = one_hot_bytes(t)
    pred = _pred(*cases["port split 0.8 / 0.2"])
    assert torch.equal(structural_loss(pred, target, **OPTS),
                       structural_loss(pred, target, integral_mass=False, **OPTS))
    pred = _pred(*cases["target"])
    assert torch.equal(structural_loss(pred, target, **OPTS),
                       structural_loss(pred, target, integral_mass=True, **OPTS))


def test_straight_through_gradient_is_the_gradient_at_the_rounded_masses():
    t, labels, edges, cases = _cases()
    target = one_hot_bytes(t)
    target.x = target.x.double()
    for name in ("port split in 3 of mass 1/3", "port split 0.8 / 0.2"):
        lab, w, ed = cases[name]
        pred = _pred(lab, w, ed, torch.float64)
        pred.node_weight.requires_grad_()
        (g_st,) = torch.autograd.grad(
            structural_loss(pred, target, integral_mass=True, **OPTS), pred.node_weight)
        rounded = _pred(lab, [float(round(x)) for x in w], ed, torch.float64)
        rounded.node_weight.requires_grad_()
        (g_hard,) = torch.autograd.grad(structural_loss(rounded, target, **OPTS),
                                        rounded.node_weight)
        assert torch.allclose(g_st, g_hard, atol=1e-6), name
        assert bool(torch.isfinite(g_st).all())
    # the split pieces (mass 0 in value) are pulled up: growing one lowers the loss
    lab, w, ed = cases["port split in 3 of mass 1/3"]
    pred = _pred(lab, w, ed, torch.float64)
    pred.node_weight.requires_grad_()
    structural_loss(pred, target, integral_mass=True, **OPTS).backward()
    pieces = [i for i, x in enumerate(w) if x < 0.5]
    assert bool((pred.node_weight.grad[pieces] < 0).all())


def test_gradcheck_features_and_edges_float64():
    """With integral masses the loss stays differentiable in x and edge_weight."""
    t, labels, edges, cases = _cases()
    target = one_hot_bytes(t)
    target.x = target.x.double()
    lab, w, ed = cases["port split 0.8 / 0.2"]
    base = _pred(lab, w, ed, torch.float64)
    gen = torch.Generator().manual_seed(0)
    logits = (base.x * 4 + torch.rand(base.x.shape, generator=gen, dtype=torch.float64))
    # a per-node temperature keeps gradcheck's input small (n + E numbers, not n*8*256)
    s0 = torch.linspace(0.5, 1.5, base.num_nodes, dtype=torch.float64).requires_grad_()
    w0 = torch.linspace(0.2, 0.9, len(ed), dtype=torch.float64).requires_grad_()

    def f(scale, ew):
        pred = Data(x=(scale.view(-1, 1, 1) * logits).softmax(-1), edge_index=base.edge_index,
                    edge_weight=ew, node_weight=base.node_weight, num_nodes=base.num_nodes)
        return structural_loss(pred, target, integral_mass=True, **OPTS)

    assert torch.autograd.gradcheck(f, (s0, w0), eps=1e-6, atol=1e-5)


def test_all_masses_rounding_to_zero_give_a_finite_loss_and_gradient():
    t, labels, edges, _ = _cases()
    target = Batch.from_data_list([one_hot_bytes(t)] * 2)
    pred = Batch.from_data_list([_pred(labels, [0.3] * len(labels), edges),
                                 _pred(labels, [0.7] * len(labels), edges)])
    pred.node_weight.requires_grad_()
    loss = structural_loss(pred, target, integral_mass=True, reduction="none", **OPTS)
    # graph 0 is empty: every target node and edge inserted; graph 1 is the target
    assert loss.tolist() == pytest.approx([len(labels) + len(edges), 0.0], abs=0.1)
    loss.sum().backward()
    assert bool(torch.isfinite(pred.node_weight.grad).all())
    assert bool((pred.node_weight.grad[: len(labels)] < 0).all())
