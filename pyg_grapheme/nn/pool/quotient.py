r"""How edges are kept: the quotient graph of a partition (the *connect* step of PyG's
select -> connect -> reduce split of pooling).

The clusters are the connected components of the merged edges; every input edge is
remapped to its two clusters, self-loops are dropped and duplicates coalesced in one
sort whose inverse map the reductions share. All of it has data-dependent shapes (and
host syncs), so :class:`~pyg_grapheme.nn.pool.ThresholdMergePool` runs it inside its
one :func:`torch.compiler.disable` region.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from pyg_grapheme.nn.components import connected_components


class Quotient(NamedTuple):
    r"""A partition of the input nodes and its coarse edges (:math:`N` input nodes,
    :math:`E` input edges, :math:`C` clusters, :math:`G` coarse edges, :math:`B`
    input edges between two clusters).

    Fields:
        cluster: cluster of each input node :obj:`[N]`, numbered by smallest node.
        num_clusters: :math:`C`.
        size: nodes per cluster :obj:`[C]`.
        batch: graph of each cluster :obj:`[C]`.
        edge_index: coarse edges :obj:`[2, G]`, coalesced, sorted row-major, no loops.
        edge_id: ids of the input edges between two clusters :obj:`[B]`.
        inverse: coarse edge of each of them :obj:`[B]`.
        cu, cv: clusters of the source and target of every input edge :obj:`[E]`.
        key: :math:`a C + b` of every coarse edge :math:`(a, b)` :obj:`[G]` (sorted).
        count: input edges coalesced into each coarse edge :obj:`[G]`.
    """

    cluster: Tensor
    num_clusters: int
    size: Tensor
    batch: Tensor
    edge_index: Tensor
    edge_id: Tensor
    inverse: Tensor
    cu: Tensor
    cv: Tensor
    key: Tensor
    count: Tensor  # type: ignore[assignment]  # shadows tuple.count, as NamedTuple allows


def quotient(
    edge_index: Tensor, kept: Tensor, batch: Tensor, num_nodes: int, method: str = "auto"
) -> Quotient:
    r"""The quotient graph whose clusters are the connected components of the
    :obj:`kept` edges (direction ignored).

    Args:
        edge_index (torch.Tensor): Input edges :obj:`[2, E]`.
        kept (torch.Tensor): Bool :obj:`[E]`, the edges that merge their end nodes.
        batch (torch.Tensor): Graph of each input node :obj:`[N]`.
        num_nodes (int): :math:`N`.
        method (str, optional): Components method (see
            :func:`~pyg_grapheme.nn.connected_components`). (default: :obj:`"auto"`)
    """
    cluster, num_clusters = connected_components(edge_index[:, kept], num_nodes, method)
    out_batch = batch.new_empty(num_clusters).scatter_(0, cluster, batch)
    size = torch.bincount(cluster, minlength=num_clusters)
    cu = cluster.index_select(0, edge_index[0])
    cv = cluster.index_select(0, edge_index[1])
    coarse_edge_index, edge_id, inverse, key, count = _coalesce(cu, cv, num_clusters)
    return Quotient(cluster, num_clusters, size, out_batch, coarse_edge_index, edge_id,
                    inverse, cu, cv, key, count)


def coarsen_edges(
    cluster: Tensor, edge_index: Tensor, num_clusters: int
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Remap edges to clusters, drop self-loops and coalesce duplicates in one sort.

    Returns:
        (edge_index, edge_id, inverse): the coarse edges :obj:`[2, G]` sorted row-major
        (as :func:`torch_geometric.utils.coalesce` leaves them), the ids of the input
        edges between two different clusters :obj:`[B]`, and the coarse edge of each of
        them :obj:`[B]` (sorted). The :obj:`inverse` map lets several reductions
        (weights, survival, counts) share the one sort that
        :func:`~torch_geometric.utils.coalesce` would redo for each.
    """
    cu = cluster.index_select(0, edge_index[0])
    cv = cluster.index_select(0, edge_index[1])
    return _coalesce(cu, cv, num_clusters)[:3]


def _coalesce(
    cu: Tensor, cv: Tensor, num_clusters: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(edge_index, edge_id, inverse, key, count)`` of the coarse edges (see
    :class:`Quotient`)."""
    edge_id = (cu != cv).nonzero().view(-1)
    key = (cu * num_clusters + cv).index_select(0, edge_id)
    step = key[1:] - key[:-1]
    if bool((step > 0).all()):  # sorted, no duplicates (a chain): nothing to merge
        inverse = torch.arange(key.numel(), device=key.device)
        count = torch.ones_like(key)
    else:
        if not bool((step >= 0).all()):
            key, perm = torch.sort(key)
            edge_id = edge_id.index_select(0, perm)
        new = torch.ones_like(key, dtype=torch.bool)
        new[1:] = key[1:] != key[:-1]
        inverse = new.cumsum(0) - 1
        start = new.nonzero().view(-1)
        key = key.index_select(0, start)
        count = torch.diff(start, append=start.new_full((1,), edge_id.numel()))
    out = torch.stack([torch.div(key, num_clusters, rounding_mode="floor"), key % num_clusters])
    return out, edge_id, inverse, key, count
