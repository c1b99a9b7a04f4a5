r"""The O(n + E) local-density ("clique") term for (soft) DAGs.

A clique of a DAG is a transitive tournament: every triple of it is a transitive
triangle :math:`u \to v \to w,\ u \to w`. Counting triangles is not linear in the
number of edges, but the three *open* triangles (wedges) they close are counted per node
from its degrees alone. With edge probabilities (soft weights) :math:`w_e \in [0, 1]` and
node masses :math:`a_i \ge 0`, edge :math:`e = (i \to k)` contributes
:math:`p^{+}_e = w_e a_k` to the out-degree of :math:`i` and :math:`p^{-}_e = w_e a_i` to
the in-degree of :math:`k`:

.. math::
    d^+_i = \sum_{e = (i \to k)} p^+_e, \qquad d^-_k = \sum_{e = (i \to k)} p^-_e,

    \mathrm{wedge}_i = d^-_i d^+_i
        + \tfrac12\Big[(d^+_i)^2 - \sum_{e=(i\to\cdot)} (p^+_e)^2\Big]
        + \tfrac12\Big[(d^-_i)^2 - \sum_{e=(\cdot\to i)} (p^-_e)^2\Big],

the expected numbers, under independent edges, of out-edges, in-edges and of paths
:math:`\cdot\to i\to\cdot`, out-stars and in-stars centred at :math:`i` (the three wedge
types; a transitive triangle closes one of each). Each statistic is resolved by the
node's features (labels) and weighted by the node's mass:

.. math::
    H_s[k] = \sum_i a_i\, s_i\, x_{ik}, \qquad s \in \{d^+, d^-, \mathrm{wedge}\},

a ``[3, D]`` signature per graph (for ``x`` of shape ``[N, S, K]`` the slots are flattened
and divided by :math:`S`, so a one-hot node counts once). The term compares signatures:

.. math::
    \mathrm{clique}(G, H) = \tfrac12 \sum_s \big\lVert H_s(G) - H_s(H) \big\rVert_1 .

With one-hot labels, :math:`\tfrac12(\lVert\Delta H_{d^+}\rVert_1 + \lVert\Delta
H_{d^-}\rVert_1)` changes by at most 1 per edge insertion or deletion and is at least the
difference in edge counts; the wedge part sees how edges cluster (branching, merging,
chaining) around nodes of each label. Everything is a sum over edges followed by a sum
over nodes, hence :math:`O(n + E)` per graph (times the feature width :math:`D`), with
no alignment. It is differentiable w.r.t. edge weights, node masses and features. The
prototype it replaces compared the mean and variance of out-degree / (n - 1), which gave
features no gradient.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch_geometric.utils import to_dense_batch

from pyg_grapheme.loss.inputs import _read_pair, _reduce, _Side

__all__ = ["clique_statistics", "clique_loss"]


def clique_statistics(
    x: Tensor,
    edge_index: Tensor,
    batch: Tensor | None = None,
    num_graphs: int | None = None,
    edge_weight: Tensor | None = None,
    node_weight: Tensor | None = None,
) -> Tensor:
    r"""The per-graph density signature :math:`H` (see the module docstring).

    Args:
        x: ``[N, D]`` or ``[N, S, K]`` node features (rows are typically distributions).
        edge_index: ``[2, E]`` directed edges (source -> target).
        batch: ``[N]`` graph of each node (sorted or not); ``None`` for one graph.
        num_graphs: number of graphs ``B`` (counts trailing empty graphs).
        edge_weight: ``[E]`` in [0, 1] (default 1); node_weight: ``[N]`` >= 0 (default 1).

    Returns:
        ``[B, 3, D']`` with ``D' = D`` or ``S*K``: rows ``d+``, ``d-``, ``wedge``.
    """
    N = x.size(0)
    feat = x.reshape(N, math.prod(x.shape[1:]))
    if x.dim() == 3:
        feat = feat / x.size(1)
    dtype = feat.dtype
    if batch is None:
        batch = torch.zeros(N, dtype=torch.long, device=x.device)
    if num_graphs is None:
        num_graphs = int(batch.max()) + 1 if N > 0 else 1
    a = x.new_ones(N, dtype=dtype) if node_weight is None else node_weight.to(dtype)
    src, dst = edge_index[0], edge_index[1]
    w = (
        torch.ones(src.numel(), dtype=dtype, device=x.device)
        if edge_weight is None
        else edge_weight.to(dtype)
    )
    p_out = w * a[dst]
    p_in = w * a[src]
    zeros = torch.zeros(N, dtype=dtype, device=x.device)
    d_out = zeros.index_add(0, src, p_out)
    d_in = zeros.index_add(0, dst, p_in)
    sq_out = zeros.index_add(0, src, p_out * p_out)
    sq_in = zeros.index_add(0, dst, p_in * p_in)
    wedge = d_in * d_out + 0.5 * (d_out * d_out - sq_out) + 0.5 * (d_in * d_in - sq_in)
    stats = torch.stack([d_out, d_in, wedge], dim=1) * a.unsqueeze(1)  # [N, 3]
    if N > 1 and bool((batch[1:] < batch[:-1]).any()):  # unsorted: scatter [N, 3, D]
        H = torch.zeros(num_graphs, 3, feat.size(1), dtype=dtype, device=x.device)
        return H.index_add(0, batch, stats.unsqueeze(2) * feat.unsqueeze(1))
    # Sorted (PyG collation): a batched [3, n] @ [n, D] product per graph, without the
    # [N, 3, D] outer product (faster forward + backward on byte-head features
    # [N, 8, 256]: docs/loss.md).
    fd = to_dense_batch(feat, batch, batch_size=num_graphs)[0]
    sd = to_dense_batch(stats, batch, batch_size=num_graphs)[0]
    return sd.transpose(1, 2) @ fd


def clique_loss(pred: Any, target: Any, reduction: str = "none") -> Tensor:
    r"""The clique term between two batches of graphs, ``[B]`` for ``reduction="none"``.

    ``pred`` and ``target`` are PyG ``Batch``-like objects (``x``, ``edge_index``,
    optional ``edge_weight``, ``node_weight``, ``batch``); see the module docstring.
    """
    p, t = _read_pair(pred, target)
    return _reduce(_clique_term(p, t), reduction)


def _clique_term(p: _Side, t: _Side) -> Tensor:
    """Half the L1 distance between the two sides' signatures, ``[B]``."""
    Hp = clique_statistics(p.x, p.edge_index, p.batch, p.num_graphs, p.edge_weight, p.node_weight)
    Ht = clique_statistics(t.x, t.edge_index, t.batch, t.num_graphs, t.edge_weight, t.node_weight)
    return 0.5 * (Hp - Ht).abs().sum((1, 2))
