"""DAGGRU: torch's GRU and a per-node networkx-ordered loop as oracles, both paths alike,
gradients in float64, batches, compile, bad input."""

import networkx as nx
import pytest
import torch
from torch import nn
from torch.autograd import gradcheck
from torch_geometric.data import Batch

from pyg_grapheme import text_to_graph
from pyg_grapheme.nn import DAGGRU, GraphTransformNet
from pyg_grapheme.nn.blocks import reading_order
from tests.conftest import DEVICES

TEXTS = ["abc", "x", "(* (- 2 4) 4)", "hello wörld 👋🏽"]


def _text_batch():
    batch = Batch.from_data_list([text_to_graph(t) for t in TEXTS])
    vec, _, chain = reading_order(batch)
    return batch, vec, chain


def _random_dag(n: int, p: float, gen: torch.Generator) -> torch.Tensor:
    """Edges i -> j (i < j) with probability p, nodes then shuffled (no order to lean on)."""
    i, j = torch.triu_indices(n, n, offset=1)
    keep = torch.rand(i.numel(), generator=gen) < p
    perm = torch.randperm(n, generator=gen)
    return torch.stack([perm[i[keep]], perm[j[keep]]])


def _oracle(layer: DAGGRU, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
    """One torch GRUCell step per node in a networkx topological order, each direction."""
    out = []
    for gru, edges in ((layer.fwd, edge_index), (layer.bwd, edge_index.flip(0))):
        cell = nn.GRUCell(layer.in_channels, gru.hidden_size).to(x.dtype)
        cell.weight_ih.data.copy_(gru.weight_ih_l0)
        cell.weight_hh.data.copy_(gru.weight_hh_l0)
        cell.bias_ih.data.copy_(gru.bias_ih_l0)
        cell.bias_hh.data.copy_(gru.bias_hh_l0)
        g = nx.DiGraph()
        g.add_nodes_from(range(x.size(0)))
        g.add_edges_from(edges.t().tolist())
        h: dict[int, torch.Tensor] = {}
        for v in nx.topological_sort(g):
            preds = list(g.predecessors(v))
            prev = (torch.stack([h[u] for u in preds]).mean(0) if preds
                    else x.new_zeros(gru.hidden_size))
            h[v] = cell(x[v : v + 1], prev.unsqueeze(0))[0]
        out.append(torch.stack([h[v] for v in range(x.size(0))]))
    return torch.cat(out, dim=-1)


def test_levels_match_a_per_node_loop_on_random_dags():
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    layer = DAGGRU(6, 8).double()
    for n, p in ((1, 0.5), (7, 0.0), (9, 0.3), (12, 0.6)):
        ei = _random_dag(n, p, gen)
        x = torch.randn(n, 6, dtype=torch.double, generator=gen)
        torch.testing.assert_close(layer(x, ei), _oracle(layer, x, ei))


def test_chains_are_torch_bidirectional_gru_per_graph():
    torch.manual_seed(0)
    batch, vec, chain = _text_batch()
    layer = DAGGRU(5, 8).double()
    ref = nn.GRU(5, 4, batch_first=True, bidirectional=True).double()
    for suffix, gru in (("", layer.fwd), ("_reverse", layer.bwd)):
        for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            getattr(ref, name + suffix).data.copy_(getattr(gru, name))
    x = torch.randn(batch.num_nodes, 5, dtype=torch.double)
    out = layer(x, chain, vec, chains=True)
    for g in range(len(TEXTS)):
        sl = slice(int(batch.ptr[g]), int(batch.ptr[g + 1]))
        torch.testing.assert_close(out[sl], ref(x[sl].unsqueeze(0))[0][0])
    # the level path follows the same chains to the same states
    torch.testing.assert_close(layer(x, chain, vec), out)


def test_direction_matters_and_states_reach_along_the_whole_chain():
    torch.manual_seed(0)
    layer = DAGGRU(4, 6)
    x = torch.randn(10, 4)
    src = torch.arange(9)
    ei = torch.stack([src, src + 1])
    base = layer(x, ei)
    x2 = x.clone()
    x2[0] += 1.0  # the first node reaches the last one's forward state, not its own backward
    moved = (layer(x2, ei) - base).abs()
    assert moved[9, :3].max() > 1e-7  # decays along the chain, but arrives
    assert moved[1:, 3:].max() == 0


def test_gradcheck_float64_both_paths():
    torch.manual_seed(0)
    batch, vec, chain = _text_batch()
    layer = DAGGRU(3, 4).double()
    x = torch.randn(batch.num_nodes, 3, dtype=torch.double, requires_grad=True)
    assert gradcheck(lambda t: layer(t, chain, vec, chains=True), (x,))
    ei = _random_dag(8, 0.4, torch.Generator().manual_seed(1))
    y = torch.randn(8, 3, dtype=torch.double, requires_grad=True)
    assert gradcheck(lambda t: layer(t, ei), (y,))


def test_empty_input_cycle_and_odd_width():
    layer = DAGGRU(3, 4)
    empty = torch.zeros(0, 3)
    none = torch.zeros(2, 0, dtype=torch.long)
    assert layer(empty, none).shape == (0, 4)
    assert layer(empty, none, torch.zeros(0, dtype=torch.long), chains=True).shape == (0, 4)
    with pytest.raises(ValueError, match="cycle"):
        layer(torch.randn(3, 3), torch.tensor([[0, 1, 2], [1, 2, 0]]))
    with pytest.raises(ValueError, match="even"):
        DAGGRU(3, 5)


def test_reset_parameters_and_repr():
    layer = DAGGRU(3, 4)
    before = [p.clone() for p in layer.parameters()]
    layer.reset_parameters()
    assert any(not torch.equal(a, b) for a, b in zip(before, layer.parameters(), strict=True))
    assert repr(layer) == "DAGGRU(3, 4)"
    gated = DAGGRU(3, 4, gate=0.5)
    gated.gate.data.fill_(2.0)
    gated.reset_parameters()
    assert gated.gate.eq(0.5).all() and repr(gated) == "DAGGRU(3, 4, gate=0.5)"
    x, ei = torch.randn(5, 3), torch.tensor([[0, 1, 2], [1, 2, 3]])
    gated.gate.data.fill_(1.0)
    plain = DAGGRU(3, 4)
    plain.load_state_dict(gated.state_dict(), strict=False)
    torch.testing.assert_close(gated(x, ei), plain(x, ei))


@pytest.mark.parametrize("device", DEVICES)
def test_chain_path_compiles(device):
    torch.manual_seed(0)
    batch, vec, chain = _text_batch()
    layer = DAGGRU(8, 8).to(device)
    x = torch.randn(batch.num_nodes, 8, device=device)
    vec, chain = vec.to(device), chain.to(device)
    longest = int(torch.bincount(vec).max())

    def run(t):
        return layer(t, chain, vec, chains=True, batch_size=len(TEXTS), max_num_nodes=longest)

    # dynamo does not trace torch's RNNs: the GRU calls run eagerly between graphs
    compiled = torch.compile(run, backend="aot_eager")
    torch.testing.assert_close(compiled(x), run(x))


def test_transform_net_gru_options():
    torch.manual_seed(0)
    kw = dict(hidden=16, heads=2, max_answer_length=8)
    plain = GraphTransformNet(**kw)
    count = sum(p.numel() for p in plain.parameters())
    for flags in ({"encoder_gru": True}, {"decoder_gru": True}):
        net = GraphTransformNet(**kw, **flags)
        extra = sum(p.numel() for p in net.parameters()) - count
        assert extra == 2 * 3 * (16 * 8 + 8 * 8 + 2 * 8) + 16  # two GRUs of width 8, a gate
        gru = net.gru if "encoder_gru" in flags else net.canvas_gru
        assert gru is not None and gru.gate is not None and not gru.gate.any()
        batch = Batch.from_data_list([text_to_graph(t) for t in TEXTS])
        net.eval()
        with torch.no_grad():  # closed, the network is the plain one
            net.load_state_dict(plain.state_dict(), strict=False)
            torch.testing.assert_close(net(batch).canvas_log_probs,
                                       plain.eval()(batch).canvas_log_probs)
        out = net(batch).canvas_log_probs
        (out * torch.randn_like(out)).sum().backward()
        assert gru.gate.grad.abs().sum() > 0  # the gate learns to open
