"""ExpressionNet: shapes, masses, edges within questions, and a gradient for every part."""

import torch
from torch_geometric.data import Batch

from pyg_grapheme.data.expression import expression_graph, parse_polish
from pyg_grapheme.data.graphemes import text_to_graph
from pyg_grapheme.loss import structural_loss
from pyg_grapheme.nn import ExpressionNet, hard_graphs, one_hot_bytes

QUESTIONS = ["(+ 3 4)", "(- (* 12 4) 5)", "(* 7 (+ 2 9))"]


def _run(net):
    inputs = Batch.from_data_list([text_to_graph(q) for q in QUESTIONS])
    return inputs, net(inputs)


def test_shapes_masses_and_edges_within_each_question():
    torch.manual_seed(0)
    net = ExpressionNet(hidden=16, heads=2)
    _, pred = _run(net)
    C = pred.x.size(0)
    assert pred.x.shape == (C, 8, 256) and pred.num_graphs == 3
    torch.testing.assert_close(pred.x.sum(-1), torch.ones(C, 8))
    assert bool(((pred.keep > 0) & (pred.keep < 1)).all())
    sizes = torch.bincount(pred.batch, minlength=3)
    assert pred.edge_index.size(1) == int((sizes * (sizes - 1)).sum())  # all ordered pairs
    assert bool((pred.batch[pred.edge_index[0]] == pred.batch[pred.edge_index[1]]).all())
    # pos: each token's first grapheme, increasing within a question (reading order)
    for g in range(3):
        pos = pred.pos[pred.batch == g]
        assert bool((pos[1:] > pos[:-1]).all()) and int(pos[0]) == 0


def test_hard_graphs_keep_nodes_and_edges_above_half():
    torch.manual_seed(0)
    net = ExpressionNet(hidden=16, heads=2)
    _, pred = _run(net)
    with torch.no_grad():
        pred.keep = torch.linspace(0, 1, pred.keep.numel())
        pred.edge_weight = torch.ones_like(pred.edge_weight)
    graphs = hard_graphs(pred)
    kept = [int(((pred.keep > 0.5) & (pred.batch == g)).sum()) for g in range(3)]
    assert [c.size(0) for c, _ in graphs] == kept
    for (_, e), k in zip(graphs, kept, strict=True):
        assert e.size(1) == k * (k - 1)  # every edge between kept nodes, renumbered
        assert e.numel() == 0 or int(e.max()) < k


def test_structural_loss_reaches_every_part():
    torch.manual_seed(0)
    net = ExpressionNet(hidden=16, heads=2)
    _, pred = _run(net)
    targets = Batch.from_data_list([expression_graph(parse_polish(q)) for q in QUESTIONS])
    loss = structural_loss(pred, one_hot_bytes(targets), alpha=1.0, beta=1.0, gamma=0.0,
                           node_cost="nll")
    loss.backward()
    for name in ("keep.weight", "head.lin2.weight", "edge_head.lin_src.weight",
                 "edge_head.rel.weight", "encoder.byte_emb.weight", "pool.theta"):
        grad = dict(net.named_parameters())[name].grad
        assert grad is not None and bool(grad.abs().sum() > 0), name


def test_reset_parameters_sets_the_keep_bias():
    net = ExpressionNet(hidden=8, heads=2, keep_bias=-1.5)
    with torch.no_grad():
        net.keep.bias.fill_(3.0)
    net.reset_parameters()
    assert float(net.keep.bias.detach()) == -1.5
