"""Expression trees of the math curriculum: graph layout, Polish decoding, exact match."""

import random

import pytest
import torch
from torch_geometric.loader import DataLoader

from pyg_grapheme.data.curriculum import generate_curriculum, universe
from pyg_grapheme.data.expression import (
    ORDER,
    expr_from_json,
    expression_graph,
    expression_pairs,
    graph_exact_match,
    label_bytes,
    node_labels,
    parse_polish,
    polish,
    tree_to_polish,
)
from pyg_grapheme.data.pair import FOLLOW_BATCH, split_pair_batch


def test_tree_layout_of_a_nested_expression():
    g = expression_graph(parse_polish("(+ (* 3 4) 16)"))
    assert node_labels(g.x) == ["+", "*", "3", "4", "16"]  # pre-order, 16 is one node
    edges = {(s, d, k) for (s, d), k in zip(g.edge_index.t().tolist(), g.edge_attr.tolist(),
                                              strict=True)}
    assert edges == {(0, 1, 0), (0, 4, 1), (1, 4, ORDER), (1, 2, 0), (1, 3, 1), (2, 3, ORDER)}
    assert g.x.dtype == torch.uint8 and g.x.shape == (5, 8)
    assert g.x[4, :3].tolist() == [ord("1") + 1, ord("6") + 1, 0]


def test_every_curriculum_problem_round_trips():
    exprs = list(universe(1)) + random.Random(0).sample(list(universe(2)), 500)
    for e in exprs:
        g = expression_graph(e)
        assert tree_to_polish(node_labels(g.x), g.edge_index) == polish(e)
    record = generate_curriculum(2, 0, (3, 0, 0))["train"][0]
    assert polish(expr_from_json(record["input_expr"])) == record["input_polish"]
    assert parse_polish(record["input_polish"]) == expr_from_json(record["input_expr"])


def test_decoding_ignores_node_numbering():
    g = expression_graph(parse_polish("(- (+ 2 9) 7)"))
    labels = node_labels(g.x)
    perm = torch.tensor([3, 0, 4, 1, 2])  # new id of old node i
    new_labels = [None] * 5
    for old, new in enumerate(perm.tolist()):
        new_labels[new] = labels[old]
    assert tree_to_polish(new_labels, perm[g.edge_index]) == "(- (+ 2 9) 7)"
    assert graph_exact_match(labels, g.edge_index, new_labels, perm[g.edge_index])


def test_argument_order_and_labels_matter():
    a = expression_graph(parse_polish("(- 7 3)"))
    b = expression_graph(parse_polish("(- 3 7)"))
    assert not graph_exact_match(node_labels(a.x), a.edge_index, node_labels(b.x), b.edge_index)
    # without the order edge the two trees would be isomorphic (networkx agrees)
    keep_a, keep_b = a.edge_attr != ORDER, b.edge_attr != ORDER
    assert graph_exact_match(node_labels(a.x), a.edge_index[:, keep_a],
                             node_labels(b.x), b.edge_index[:, keep_b])
    assert not graph_exact_match(["+", "3", "4"], a.edge_index, ["+", "3", "5"], a.edge_index)


@pytest.mark.parametrize("labels,edges", [
    (["+", "3", "4"], []),  # no edges: three roots
    (["+", "3"], [(0, 1)]),  # one argument
    (["+", "3", "4"], [(0, 1), (1, 2), (2, 0)]),  # a cycle, no root
    (["3", "4"], [(0, 1)]),  # a number with a child
])
def test_malformed_graphs_decode_without_error(labels, edges):
    text = tree_to_polish(labels, edges)
    assert "?" in text


def test_bad_polish_and_labels_are_named():
    with pytest.raises(ValueError, match="operator"):
        parse_polish("(^ 1 2)")
    with pytest.raises(ValueError, match="trailing"):
        parse_polish("(+ 1 2) 3")
    with pytest.raises(ValueError, match="1 to 8"):
        label_bytes(["123456789"])


def test_pairs_batch_with_the_target_side_incremented():
    pairs = expression_pairs(2, "val", sizes=(0, 4, 0))
    assert [int(p.level) for p in pairs] == [2] * 4
    batch = next(iter(DataLoader(pairs, batch_size=4, follow_batch=FOLLOW_BATCH)))
    inputs, targets = split_pair_batch(batch)
    assert targets.x.shape == (20, 8) and targets.edge_index.shape == (2, 24)
    src, dst = targets.edge_index
    assert bool((targets.batch[src] == targets.batch[dst]).all())
    assert inputs.num_graphs == targets.num_graphs == 4
