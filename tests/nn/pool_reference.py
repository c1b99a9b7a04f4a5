r"""Plain-autograd references of the pool's expected-count estimator (used by the tests
only): :func:`expected_node_share` :math:`w_c` and :func:`expected_edge_share`
:math:`M_g` as defined in :mod:`pyg_grapheme.nn.pool.estimators`, built from ~40
autograd nodes where the layer's fused backward (``_ExpectedCounts``) uses one."""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.utils import scatter

from pyg_grapheme.nn.pool.estimators import bridge_weights
from pyg_grapheme.nn.pool.quotient import Quotient, _coalesce


def _hard_partition(cluster: Tensor, edge_index: Tensor, num_clusters: int) -> Quotient:
    cu, cv = cluster[edge_index[0]], cluster[edge_index[1]]
    coarse_edge_index, edge_id, inverse, key, count = _coalesce(cu, cv, num_clusters)
    size = torch.bincount(cluster, minlength=num_clusters)
    return Quotient(cluster, num_clusters, size, cluster.new_zeros(num_clusters),
                    coarse_edge_index, edge_id, inverse, cu, cv, key, count)


def expected_node_share(
    merge_prob: Tensor, kept: Tensor, cluster: Tensor, edge_index: Tensor, num_clusters: int
) -> Tensor:
    r"""Each cluster's share :math:`w_c` of the expected number of clusters, :obj:`[C]`:

    .. math::
        w_c = 1 + \sum_{e \in K_c} \kappa_e (1 - p_e)
              - \tfrac12 \sum_{e \in \partial c} \kappa_e p_e

    Args:
        merge_prob: :math:`p_e` :obj:`[E]`.
        kept: bool :obj:`[E]`, merged and not a self-loop.
        cluster, edge_index, num_clusters: the hard partition and the input edges.
    """
    q = _hard_partition(cluster, edge_index, num_clusters)
    kappa = bridge_weights(kept, q, merge_prob.dtype)[0]
    inner = torch.where(kept, kappa * (1.0 - merge_prob), 0.0)
    boundary = torch.where(q.cu != q.cv, -0.5 * kappa * merge_prob, 0.0)
    index = torch.cat([q.cu, q.cu, q.cv])
    src = torch.cat([inner, boundary, boundary])
    return 1.0 + scatter(src, index, 0, num_clusters, reduce="sum")


def expected_edge_share(
    merge_prob: Tensor,
    kept: Tensor,
    cluster: Tensor,
    edge_index: Tensor,
    num_clusters: int,
    eps: float = 1e-6,
) -> Tensor:
    r"""Each coarse edge's share of the expected number of coarse edges, :obj:`[G]` in
    the order of :func:`~pyg_grapheme.nn.pool.coarsen_edges`:

    .. math::
        M_g = \prod_{e \to g} (1 - p_e) + \lambda_a A_a + \lambda_b A_b, \qquad
        A_c = \sum_{e \in K_c} (1 - p_e)
    """
    q = _hard_partition(cluster, edge_index, num_clusters)
    lam = bridge_weights(kept, q, merge_prob.dtype)[1]
    prob = merge_prob[q.edge_id].clamp(max=1.0 - eps)
    survival = torch.exp(scatter(torch.log1p(-prob), q.inverse, 0, q.edge_index.size(1)))
    # lam_e = 1 / deg(c_e) on kept edges: A_c / deg(c) summed per cluster
    back = scatter(lam * (1.0 - merge_prob), q.cu, 0, num_clusters, reduce="sum")
    return survival + back[q.edge_index[0]] + back[q.edge_index[1]]
