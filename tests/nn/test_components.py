import numpy as np
import pytest
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components as scipy_cc

from pyg_grapheme.nn import connected_components
from tests.conftest import DEVICES


def oracle(edge_index: torch.Tensor, num_nodes: int) -> tuple[torch.Tensor, int]:
    """scipy's labels, renumbered by the smallest node index of each component."""
    ei = edge_index.cpu().numpy()
    adj = coo_matrix((np.ones(ei.shape[1]), (ei[0], ei[1])), shape=(num_nodes, num_nodes))
    n, labels = scipy_cc(adj, directed=True, connection="weak")
    order = {}
    for lab in labels.tolist():
        order.setdefault(lab, len(order))
    return torch.tensor([order[lab] for lab in labels.tolist()], dtype=torch.long), n


def random_graph(num_nodes: int, num_edges: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(num_nodes, (2, num_edges), generator=g)


def random_chain_pieces(num_nodes: int, keep: float, seed: int, permute: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    row = torch.arange(num_nodes - 1)
    mask = torch.rand(num_nodes - 1, generator=g) < keep
    ei = torch.stack([row[mask], row[mask] + 1])
    if permute:  # labels no longer follow the chain: the hard case for min-label hooking
        ei = torch.randperm(num_nodes, generator=g)[ei]
    return ei


@pytest.mark.parametrize("method", ["torch", "scipy", "auto"])
@pytest.mark.parametrize("seed", range(6))
def test_matches_scipy_random_graphs(method, seed):
    num_nodes = [1, 7, 50, 300, 1000, 3000][seed]
    for num_edges in [0, num_nodes // 3, num_nodes, 3 * num_nodes]:
        ei = random_graph(num_nodes, num_edges, seed)  # self-loops, duplicates included
        cluster, n = connected_components(ei, num_nodes, method=method)
        expected, n_expected = oracle(ei, num_nodes)
        assert n == n_expected
        assert cluster.dtype == torch.long
        assert torch.equal(cluster, expected)


@pytest.mark.parametrize("method", ["torch", "scipy"])
@pytest.mark.parametrize("permute", [False, True])
def test_matches_scipy_chains(method, permute):
    for seed, keep in enumerate([0.0, 0.3, 0.9, 1.0]):
        ei = random_chain_pieces(2000, keep, seed, permute)
        cluster, n = connected_components(ei, 2000, method=method)
        expected, n_expected = oracle(ei, 2000)
        assert n == n_expected and torch.equal(cluster, expected)


@pytest.mark.parametrize("seed", range(3))
def test_auto_path_fast_path_matches_scipy(seed):
    """Edges between consecutive indices only (chains, either direction, duplicates):
    'auto' takes the cumulative-sum path; it must agree with scipy."""
    g = torch.Generator().manual_seed(seed)
    for n in [1, 2, 10, 500, 6000]:
        ei = random_chain_pieces(n, 0.6, seed, permute=False)
        flip = torch.rand(ei.size(1), generator=g) < 0.5
        ei = torch.where(flip, ei.flip(0), ei)
        ei = torch.cat([ei, ei[:, : ei.size(1) // 3]], dim=1)
        cluster, num = connected_components(ei, n)
        expected, n_expected = oracle(ei, n)
        assert num == n_expected and torch.equal(cluster, expected)


def test_numbering_by_smallest_index():
    # 0-3-5, 1-4, 2 isolated: components appear in index order 0, 1, 2.
    ei = torch.tensor([[5, 4, 3], [3, 1, 0]])
    for method in ["torch", "scipy"]:
        cluster, n = connected_components(ei, 6, method=method)
        assert n == 3
        assert cluster.tolist() == [0, 1, 2, 0, 1, 0]


def test_empty_inputs():
    for method in ["torch", "scipy"]:
        cluster, n = connected_components(torch.empty(2, 0, dtype=torch.long), 0, method)
        assert n == 0 and cluster.numel() == 0
        cluster, n = connected_components(torch.empty(2, 0, dtype=torch.long), 4, method)
        assert n == 4 and cluster.tolist() == [0, 1, 2, 3]


def test_auto_stays_in_torch(monkeypatch):
    """'auto' never round-trips through scipy (measured slower; see the module doc)."""
    import pyg_grapheme.nn.components as comp

    def fail(*args):
        raise AssertionError("scipy called")

    monkeypatch.setattr(comp, "_root_label_scipy", fail)
    ei = random_graph(5000, 5000, 0)
    cluster, n = connected_components(ei, 5000)
    expected, n_expected = oracle(ei, 5000)
    assert n == n_expected and torch.equal(cluster, expected)


def test_bad_method():
    with pytest.raises(ValueError):
        connected_components(torch.empty(2, 0, dtype=torch.long), 3, method="bfs")


@pytest.mark.parametrize("device", DEVICES)
def test_device(device):
    ei = random_graph(500, 400, 3)
    cluster, n = connected_components(ei.to(device), 500)  # auto: torch on CUDA
    expected, n_expected = oracle(ei, 500)
    assert cluster.device.type == device
    assert n == n_expected and torch.equal(cluster.cpu(), expected)
