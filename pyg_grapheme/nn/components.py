r"""Connected components of a graph given as an :obj:`edge_index`.

Two interchangeable methods, both returning labels numbered by the smallest node
index of each component (component ``k`` is the ``k``-th component to appear when
the nodes are read in index order):

* ``"torch"``: min-label hooking with :meth:`torch.Tensor.scatter_reduce_` plus
  pointer jumping (a forest of stars in the style of Shiloach and Vishkin, "An
  O(log n) Parallel Connectivity Algorithm", J. Algorithms 3(1), 1982). Stays on the device of
  the input, so it is the method on CUDA; one host sync per round for the
  convergence check.
* ``"scipy"``: :func:`scipy.sparse.csgraph.connected_components` on a COO copy of
  the graph (CPU only). Hidden from :mod:`torch._dynamo` with
  :func:`torch.compiler.disable`, otherwise dynamo traces into scipy.

``"auto"`` first checks for the case of chains (the text graph of this package):
if every edge joins two consecutive node indices, the components are runs of
consecutive nodes and one cumulative sum finds them (exact, O(N)). Otherwise it takes
``"torch"``, on CPU too: scipy was never clearly faster from 500 to 1M nodes, so
there is no crossover worth switching at (figures: docs/pooling.md, ``python
experiments/bench_pool.py --components``); ``"scipy"`` stays available and is the
tests' oracle.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

METHODS = ("auto", "torch", "scipy")


def connected_components(
    edge_index: Tensor,
    num_nodes: int,
    method: str = "auto",
) -> tuple[Tensor, int]:
    r"""Weakly connected components (edge direction is ignored).

    Args:
        edge_index (torch.Tensor): Edge indices of shape :obj:`[2, E]`.
        num_nodes (int): The number of nodes :math:`N`.
        method (str, optional): :obj:`"auto"`, :obj:`"torch"` or :obj:`"scipy"`
            (see the module docstring). (default: :obj:`"auto"`)

    Returns:
        (cluster, num_components): :obj:`cluster` is a long tensor of shape
        :obj:`[N]` on the device of :obj:`edge_index` with values in
        :obj:`[0, num_components)`, numbered by the smallest node index of each
        component (so :obj:`cluster` of the nodes that are the smallest of their
        component is strictly increasing).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS} (got {method!r})")
    if method == "auto":
        if edge_index.numel() > 0:
            d = edge_index[1] - edge_index[0]
            if bool(((d == 1) | (d == -1)).all()):  # one host sync
                return _runs(edge_index, num_nodes)
        method = "torch"
    if method == "scipy":
        if edge_index.device.type != "cpu":
            raise ValueError("method='scipy' needs a CPU edge_index")
        root = _root_label_scipy(edge_index, num_nodes)
    else:
        root = _root_label_torch(edge_index, num_nodes)
    return _relabel_roots(root)


def _runs(edge_index: Tensor, num_nodes: int) -> tuple[Tensor, int]:
    """Components when every edge joins ``i`` and ``i + 1``: a new component starts at
    every node that is not linked to its predecessor."""
    linked = torch.zeros(num_nodes, dtype=torch.bool, device=edge_index.device)
    linked[torch.maximum(edge_index[0], edge_index[1])] = True
    start = ~linked
    cluster = start.cumsum(0) - 1
    return cluster, int(cluster[-1]) + 1 if num_nodes > 0 else 0


def _relabel_roots(root: Tensor) -> tuple[Tensor, int]:
    """Map "smallest node index of my component" labels to ``0..C-1`` in index order."""
    num_nodes = root.numel()
    is_root = root == torch.arange(num_nodes, device=root.device)
    new_id = is_root.cumsum(0) - 1
    num_components = int(new_id[-1]) + 1 if num_nodes > 0 else 0
    return new_id.index_select(0, root), num_components


def _root_label_torch(edge_index: Tensor, num_nodes: int) -> Tensor:
    """Label every node by the smallest node index of its component.

    Invariant: ``f[i] <= i`` and ``f[i]`` lies in the component of ``i``; after the
    pointer jumping every ``f[i]`` is a root (``f[f[i]] == f[i]``), so hooking writes
    to roots only and ``f`` stays a forest. At the fixed point every edge joins two
    nodes of the same root, which is then the component minimum.
    """
    f = torch.arange(num_nodes, device=edge_index.device)
    if edge_index.numel() == 0 or num_nodes == 0:
        return f
    row, col = edge_index[0], edge_index[1]
    first = True
    while True:
        fu, fv = f.index_select(0, row), f.index_select(0, col)
        active = fu != fv
        if not bool(active.any()):  # one host sync per round
            return f
        if not first:  # edges inside a finished star never change anything again
            row, col, fu, fv = row[active], col[active], fu[active], fv[active]
        first = False
        m = torch.minimum(fu, fv)
        # Hook the root of each end onto the smaller label (fu, fv are roots here).
        f = f.scatter_reduce(0, fu, m, reduce="amin")
        f.scatter_reduce_(0, fv, m, reduce="amin")
        while True:  # pointer jumping until f is a forest of stars
            ff = f.index_select(0, f)
            if torch.equal(ff, f):
                break
            f = ff


@torch.compiler.disable
def _root_label_scipy(edge_index: Tensor, num_nodes: int) -> Tensor:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components as sp_cc

    ei = edge_index.numpy()
    data = np.ones(ei.shape[1], dtype=np.int8)
    adj = coo_matrix((data, (ei[0], ei[1])), shape=(num_nodes, num_nodes)).tocsr()
    _, labels = sp_cc(adj, directed=True, connection="weak")
    labels = torch.from_numpy(labels.astype(np.int64))
    # scipy numbers components in the order of their first node already; convert to
    # "smallest node index" labels without relying on that.
    first = torch.full((num_nodes,), num_nodes, dtype=torch.long)
    first.scatter_reduce_(0, labels, torch.arange(num_nodes), reduce="amin")
    return first[labels]
