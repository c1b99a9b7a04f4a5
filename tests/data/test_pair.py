import torch
from torch_geometric.loader import DataLoader

from pyg_grapheme import text_to_graph
from pyg_grapheme.data import FOLLOW_BATCH, PairData, graphs_to_texts, split_pair_batch

PAIRS = [("What?", "Yes"), ("a", "bcdef"), ("", "z"), ("caf\u00e9 \U0001F431", "ok")]


def test_pair_batch_offsets_and_vectors():
    data = [PairData.from_texts(s, t) for s, t in PAIRS]
    batch = next(iter(DataLoader(data, batch_size=len(data), follow_batch=FOLLOW_BATCH)))
    ns = [text_to_graph(s).num_nodes for s, _ in PAIRS]
    nt = [text_to_graph(t).num_nodes for _, t in PAIRS]
    assert batch.x_s.size(0) == sum(ns) and batch.x_t.size(0) == sum(nt)
    assert batch.x_s_batch.tolist() == [i for i, n in enumerate(ns) for _ in range(n)]
    assert batch.x_t_batch.tolist() == [i for i, n in enumerate(nt) for _ in range(n)]
    # Each side's edges are offset by that side's own node counts.
    offs_t = [0, 3, 8, 9]
    expected_t = torch.cat(
        [text_to_graph(t).edge_index + o for (_, t), o in zip(PAIRS, offs_t, strict=True)], dim=1
    )
    assert torch.equal(batch.edge_index_t, expected_t)
    offs_s = torch.tensor([0, *ns]).cumsum(0)
    starts = offs_s[:-1]
    expected_s = torch.cat(
        [text_to_graph(s).edge_index + o for (s, _), o in zip(PAIRS, starts, strict=True)], dim=1
    )
    assert torch.equal(batch.edge_index_s, expected_s)
    inputs, targets = split_pair_batch(batch)
    assert inputs.num_graphs == targets.num_graphs == len(PAIRS)
    assert graphs_to_texts(inputs) == [s for s, _ in PAIRS]
    assert graphs_to_texts(targets) == [t for _, t in PAIRS]
    assert inputs.ptr.tolist() == offs_s.tolist()


def test_pair_sides_round_trip():
    pair = PairData.from_texts("in", "out")
    assert pair.side("s").num_nodes == 2 and pair.side("t").num_nodes == 3
