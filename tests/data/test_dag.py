"""The DAG task: port encoding, canonical text, decoding, generator, JSONL (networkx oracle)."""

import json
import random

import networkx as nx
import pytest
import torch
from torch_geometric.data import Batch
from torch_geometric.loader import DataLoader

from pyg_grapheme.data import read_pairs
from pyg_grapheme.data.dag import (
    Dag,
    dag_graph,
    dag_pairs,
    dag_to_text,
    decode_dag,
    generate_dag_task,
    graph_exact_match,
    graph_to_dag,
    parse_dag,
    read_dag_jsonl,
    write_dag_task,
)
from pyg_grapheme.data.expression import node_labels
from pyg_grapheme.data.graphemes import graphs_to_texts
from pyg_grapheme.data.pair import FOLLOW_BATCH, split_pair_batch
from pyg_grapheme.nn.edge_head import all_pairs
from pyg_grapheme.nn.head import one_hot_bytes
from pyg_grapheme.training.dag_module import DagDataModule, decode_predictions

SIZES = (200, 50, 50)


@pytest.fixture(scope="module")
def records():
    return {lv: generate_dag_task(lv, 0, SIZES) for lv in (1, 2)}


def _texts(records):
    return [r["input"] for lv in records for s in records[lv].values() for r in s]


def _nx(labels, edges) -> nx.DiGraph:
    g = nx.DiGraph()
    g.add_nodes_from((i, {"label": lab}) for i, lab in enumerate(labels))
    g.add_edges_from(edges.t().tolist() if isinstance(edges, torch.Tensor) else edges)
    return g


def _graph(text):
    g = dag_graph(parse_dag(text))
    return node_labels(g.x), g.edge_index


def test_example_is_a_dag_with_a_shared_node_and_ports():
    labels, edges = _graph("a=(+ 3 4);(- a (* a 2))")
    assert labels == ["+", "3", "4", "-", "*", "2", "(+", "(-", "(*"]
    g = _nx(labels, edges)
    assert nx.is_directed_acyclic_graph(g)
    assert sorted(g.predecessors(0)) == [3, 4]  # '+' has two parents: '-' and '*'
    assert g.number_of_edges() == 3 * 3  # op -> arg0, op -> port, port -> arg1
    # (* a a): the shared node is both arguments of one parent, still a simple graph
    labels, edges = _graph("a=(+ 3 4);(* a a)")
    assert sorted(_nx(labels, edges).predecessors(0)) == [3, 5]


def test_argument_order_is_in_the_adjacency():
    # without ports (parent -> child only) the two are isomorphic; with them they are not
    a, b = parse_dag("a=(+ 3 4);(- a (* a 2))"), parse_dag("a=(+ 3 4);(- (* a 2) a)")
    plain = [_nx(d.labels, [(v, c) for v, cs in enumerate(d.args) for c in cs]) for d in (a, b)]
    match = nx.algorithms.isomorphism.categorical_node_match("label", None)
    assert nx.is_isomorphic(*plain, node_match=match)
    ga, gb = (_nx(*_graph(dag_to_text(d))) for d in (a, b))
    assert not nx.is_isomorphic(ga, gb, node_match=match)


def test_every_text_round_trips_through_graph_and_decoder(records):
    texts = _texts(records)
    assert len(texts) == 2 * sum(SIZES)
    for text in texts:
        dag = parse_dag(text)
        assert dag_to_text(dag) == text
        labels, edges = _graph(text)
        assert decode_dag(labels, edges) == text
        # renumbered nodes decode to the same text
        perm = torch.randperm(len(labels))
        inv = torch.argsort(perm)
        assert decode_dag([labels[int(i)] for i in perm], inv[edges]) == text


def _swapped(dag: Dag, v: int) -> Dag:
    args = [list(a) for a in dag.args]
    args[v].reverse()
    return Dag(dag.labels, args, dag.root)


def test_text_equality_is_labelled_isomorphism(records):
    # the oracle: networkx isomorphism of the port graphs, on the hard cases (one
    # operator's arguments swapped: same labels, same unordered DAG) and random pairs
    texts = _texts(records)
    rng = random.Random(0)
    pairs = []
    for t in rng.sample(texts, 150):
        dag = parse_dag(t)
        v = rng.choice([v for v, a in enumerate(dag.args) if a])
        pairs.append((t, dag_to_text(_swapped(dag, v))))
    pairs += [tuple(rng.sample(texts, 2)) for _ in range(100)]
    assert sum(a == b for a, b in pairs) >= 5  # (* a a)-like swaps: the same DAG
    for t1, t2 in pairs:
        (l1, e1), (l2, e2) = _graph(t1), _graph(t2)
        iso = nx.is_isomorphic(_nx(l1, e1), _nx(l2, e2),
                               node_match=lambda u, v: u["label"] == v["label"])
        assert iso == (t1 == t2) == graph_exact_match(l1, e1, l2, e2)


def test_splits_are_seeded_disjoint_and_stable(records):
    for lv in (1, 2):
        splits = records[lv]
        assert [len(splits[s]) for s in ("train", "val", "test")] == list(SIZES)
        sets = [{r["input"] for r in splits[s]} for s in ("train", "val", "test")]
        assert sum(map(len, sets)) == sum(SIZES) and not set.intersection(*sets[:2])
        assert not (sets[0] & sets[2]) and not (sets[1] & sets[2])
        again = generate_dag_task(lv, 0, (10, 50, 50))
        assert again["val"] == splits["val"] and again["test"] == splits["test"]
        assert again["train"] == splits["train"][:10]
        assert generate_dag_task(lv, 1, (0, 0, 50))["test"] != splits["test"]
        for r in splits["train"]:  # exactly `lv` shared nodes, each an operator
            dag = parse_dag(r["input"])
            if lv == 1:  # labels distinct within a question (ports included)
                assert len(set(r["labels"])) == len(r["labels"])
            refs = [sum(c == v for a in dag.args for c in a) for v in range(len(dag.labels))]
            assert sum(x >= 2 for x in refs) == lv
            assert all(dag.args[v] for v, x in enumerate(refs) if x >= 2)


def test_malformed_graphs_decode_to_marked_text_never_raise():
    rng = random.Random(0)
    base, edges = _graph("a=(+ 3 4);(- a (* a 2))")
    good = edges.t().tolist()
    assert decode_dag(base, good) == "a=(+ 3 4);(- a (* a 2))"
    cases = [good[1:], good + [[5, 0]], good + [[0, 3]], [], [[0, 0]] + good]
    pool = [[i, j] for i in range(len(base)) for j in range(len(base))]
    cases += [rng.sample(pool, rng.randint(0, 20)) for _ in range(300)]
    for case in cases:
        text = decode_dag(base, case)
        assert text == "a=(+ 3 4);(- a (* a 2))" or text.startswith("?")
    assert decode_dag(["+", "x"], []).startswith("?")
    # a port must hang under its own operator
    assert decode_dag(["+", "(-", "1", "2"], [[0, 2], [0, 1], [1, 3]]).startswith("?port")
    assert decode_dag(["+", "(+", "1", "2"], [[0, 2], [0, 1], [1, 3]]) == "(+ 1 2)"
    assert decode_dag([], []) == "?empty graph"
    # an operator numbered before its childless port (raised IndexError in training)
    assert decode_dag(["+", "(+", "1"], [[0, 2], [0, 1]]).startswith("?port")
    labels = ["+", "(+", "*", "(*", "1", "2", "3"]
    pool = [[i, j] for i in range(len(labels)) for j in range(len(labels))]
    for _ in range(300):  # random graphs over operators, ports and numbers in any order
        order = rng.sample(labels, len(labels))
        text = decode_dag(order, rng.sample(pool, rng.randint(0, 12)))
        assert isinstance(text, str) and text
    with pytest.raises(ValueError, match="cycle"):
        graph_to_dag(["*", "(*", "+", "(+", "-", "(-", "1", "2", "3"],
                     [[0, 2], [0, 1], [1, 6], [2, 4], [2, 3], [3, 7], [4, 2], [4, 5], [5, 8]])


@pytest.mark.parametrize("text, msg", [
    ("(+ a 1)", "used before it is bound"),
    ("a=(+ 1 2);a=(+ 1 2);(* a a)", "bound twice"),
    ("(% 1 2)", "operator"),
    ("(+ 1 2", r"'\)'"),
    ("(+ 1 2) 3", "the end"),
    ("a=(+ 1 2)(* a a)", "';'"),
])
def test_parse_errors_name_the_problem(text, msg):
    with pytest.raises(ValueError, match=msg):
        parse_dag(text)


def test_canonical_form_binds_in_post_order():
    # b's definition uses a, so a is bound first; a node used once is inlined
    dag = Dag(["*", "+", "-", "1", "2", "3"], [[1, 2], [3, 4], [1, 5], [], [], []], 0)
    assert dag_to_text(dag) == "a=(+ 1 2);(* a (- a 3))"
    text = "a=(+ 1 2);b=(* a a);(- b (+ b a))"
    assert dag_to_text(parse_dag(text)) == text


def test_jsonl_round_trip_and_errors(tmp_path):
    paths = write_dag_task(tmp_path / "d", level=1, seed=0, sizes=(5, 3, 3))
    records = [json.loads(line) for line in paths["val"].read_text().splitlines()]
    assert read_pairs(paths["val"]) == [(r["input"], r["target"]) for r in records]
    pairs = read_dag_jsonl(paths["val"])
    assert graphs_to_texts(Batch.from_data_list([p.side("s") for p in pairs])) == \
        [r["input"] for r in records]
    for p, r in zip(pairs, records, strict=True):
        assert node_labels(p.x_t) == r["labels"] and p.edge_index_t.t().tolist() == r["edges"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "a=(+ 1 2);(* a a)", "target": "x"}\n'
                   '{"input": "(+  1 2)", "target": "x"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2: .*canonical"):
        read_dag_jsonl(bad)
    dm = DagDataModule(data_dir=str(tmp_path / "d"), batch_size=4)
    assert len(dm._dataset("test")) == 3
    with pytest.raises(ValueError, match="levels"):
        DagDataModule(levels=[3])


def _perfect(targets: Batch, drop_edge: int | None = None) -> Batch:
    """The targets as a prediction (every ordered pair scored), plus a dropped node."""
    onehot = one_hot_bytes(targets).x
    xs = torch.cat([onehot, torch.zeros(1, 8, 256)])
    keep = torch.cat([torch.ones(onehot.size(0)), torch.zeros(1)])
    batch = torch.cat([targets.batch, targets.batch.new_tensor([targets.num_graphs - 1])])
    pairs = all_pairs(batch)
    edges = set(map(tuple, targets.edge_index.t().tolist()))
    if drop_edge is not None:
        edges.discard(tuple(targets.edge_index[:, drop_edge].tolist()))
    weight = torch.tensor([float(tuple(p) in edges) for p in pairs.t().tolist()])
    pred = Batch(x=xs, keep=keep, edge_index=pairs, edge_weight=weight, batch=batch)
    pred._num_graphs = targets.num_graphs
    return pred


def test_decode_predictions_of_a_perfect_and_a_wrong_prediction():
    pairs = dag_pairs(1, "val", sizes=(0, 4, 0)) + dag_pairs(2, "val", sizes=(0, 4, 0))
    inputs, targets = split_pair_batch(
        next(iter(DataLoader(pairs, batch_size=8, follow_batch=FOLLOW_BATCH))))
    questions = graphs_to_texts(inputs)
    assert decode_predictions(_perfect(targets)) == questions
    wrong = decode_predictions(_perfect(targets, drop_edge=0))
    assert wrong[0].startswith("?") and wrong[1:] == questions[1:]
