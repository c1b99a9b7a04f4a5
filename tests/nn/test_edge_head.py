"""EdgeHead: all ordered pairs within each graph, soft weights, gradients, compile."""

import itertools

import pytest
import torch
from torch_geometric.data import Batch, Data

from pyg_grapheme.nn.edge_head import EdgeHead, all_pairs


def _oracle_pairs(sizes):
    out, start = [], 0
    for n in sizes:
        out += [(start + i, start + j) for i, j in itertools.permutations(range(n), 2)]
        start += n
    return sorted(out)


@pytest.mark.parametrize("sizes", [[3], [1, 4, 2], [0, 3, 0, 1], [5, 5]])
def test_all_pairs_match_itertools(sizes):
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    pairs = all_pairs(batch, len(sizes))
    assert sorted(map(tuple, pairs.t().tolist())) == _oracle_pairs(sizes)


def test_shapes_range_and_batch_independence():
    torch.manual_seed(0)
    head = EdgeHead(8, 16)
    graphs = [Data(x=torch.randn(n, 8), pos=torch.arange(n)) for n in (3, 1, 4)]
    b = Batch.from_data_list(graphs)
    out = head(b.x, b.batch, b.pos)
    assert out.edge_index.shape == (2, 6 + 0 + 12)
    assert out.edge_weight.shape == out.logit.shape == (18,)
    assert bool(((out.edge_weight >= 0) & (out.edge_weight <= 1)).all())
    # graph 2 alone gives the same scores as inside the batch (no cross-graph leakage)
    alone = head(graphs[2].x, None, graphs[2].pos)
    torch.testing.assert_close(out.logit[-12:], alone.logit)
    assert bool((b.batch[out.edge_index[0]] == b.batch[out.edge_index[1]]).all())


def test_directed_and_position_aware():
    torch.manual_seed(0)
    head = EdgeHead(4, 8, max_distance=4)
    x = torch.randn(2, 4)
    out = head(x, pos=torch.tensor([0, 1]))
    assert not torch.allclose(out.logit[0], out.logit[1])  # s_01 != s_10
    far = head(x, pos=torch.tensor([0, 3]))
    assert not torch.allclose(out.logit, far.logit)
    none = EdgeHead(4, 8, max_distance=0)
    assert none.rel is None and none(x, pos=torch.tensor([0, 1])).logit.shape == (2,)


def test_hard_graph_and_candidates():
    head = EdgeHead(2, 4, bilinear=False)
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()
        head.out.bias.fill_(1.0)
    out = head(torch.randn(3, 2))
    assert out.hard().size(1) == 6  # sigmoid(1) > 0.5 everywhere
    cand = torch.tensor([[0, 2], [1, 0]])
    sparse = head(torch.randn(3, 2), edge_index=cand)
    assert torch.equal(sparse.edge_index, cand) and sparse.hard(0.9).size(1) == 0


def test_bad_input_is_named():
    head = EdgeHead(4)
    with pytest.raises(ValueError, match=r"\[C, 4\]"):
        head(torch.randn(3, 5))
    with pytest.raises(ValueError, match="pos"):
        head(torch.randn(3, 4), pos=torch.arange(2))
    with pytest.raises(ValueError, match="max_distance"):
        EdgeHead(4, max_distance=-1)


def test_reset_parameters_and_repr():
    head = EdgeHead(4, 6, bias_init=-2.0)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(1.0)
    head.reset_parameters()
    assert float(head.out.bias.detach()) == -2.0
    assert float(head.rel.weight.detach().std()) < 0.05  # re-drawn at N(0, 0.02^2)
    assert repr(head) == "EdgeHead(4, hidden=6, max_distance=16, bilinear=True)"


def test_gradcheck_float64():
    torch.manual_seed(0)
    head = EdgeHead(3, 5, max_distance=2).double()
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    batch = torch.tensor([0, 0, 0, 1, 1])
    pos = torch.tensor([0, 2, 5, 0, 1])
    assert torch.autograd.gradcheck(lambda x: head(x, batch, pos).edge_weight, (x,))


def test_torch_compile_matches_eager():
    torch.manual_seed(0)
    head = EdgeHead(4, 8)
    x, batch, pos = torch.randn(5, 4), torch.tensor([0, 0, 1, 1, 1]), torch.arange(5)
    pairs = all_pairs(batch)
    compiled = torch.compile(head, dynamic=True)
    torch.testing.assert_close(compiled(x, batch, pos, pairs).logit,
                               head(x, batch, pos, pairs).logit)


def test_pair_features_enter_the_score():
    torch.manual_seed(0)
    head = EdgeHead(4, 8, edge_dim=3)
    x, pairs = torch.randn(3, 4), all_pairs(torch.zeros(3, dtype=torch.long))
    e = torch.randn(pairs.size(1), 3)
    a = head(x, edge_index=pairs, edge_attr=e).logit
    b = head(x, edge_index=pairs, edge_attr=e * 2).logit
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="edge_attr must be given"):
        head(x)
    with pytest.raises(ValueError, match=r"\[6, 3\]"):
        head(x, edge_index=pairs, edge_attr=e[:2])
