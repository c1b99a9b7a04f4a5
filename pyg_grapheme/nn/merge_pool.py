r"""Learnable-threshold quotient-graph pooling (:class:`ThresholdMergePool`)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Linear, Parameter
from torch_geometric.utils import scatter, softmax

from pyg_grapheme.nn.components import METHODS, connected_components

REDUCE = ("mean", "max", "sum", "attention")
EDGE_REDUCE = ("mean", "sum", "max", "min", "mul")
SIMILARITY = ("cosine", "half_cosine")
SCORE_NORM = ("graph", "none")
ESTIMATOR = ("counts", "score")


class UnpoolInfo(NamedTuple):
    r"""What :meth:`ThresholdMergePool.unpool` needs, and everything else the pooling
    step decided (:math:`N`/:math:`E` input nodes and edges, :math:`C`/:math:`G` output
    nodes and edges). The first three fields mirror
    :class:`torch_geometric.nn.pool.edge_pool.UnpoolInfo`.

    Fields:
        edge_index: the input edges :obj:`[2, E]`.
        cluster: output node of each input node :obj:`[N]`.
        batch: the input batch vector :obj:`[N]`.
        edge_weight: pooled edge weights :obj:`[G]` (or :obj:`[G, D]` for edge
            features); value = reduced input weights (1 if none), gradient of the
            coarse edge's share of the expected edge count (``estimator="counts"``).
        node_weight: node masses :obj:`[C]`, value exactly 1, gradient of the
            cluster's share of the expected node count (``estimator="counts"``).
        merge_prob: relaxed merge probability :math:`p_e` of each input edge :obj:`[E]`.
        merged: hard merge decision of each input edge :obj:`[E]` (bool).
        log_prob: :math:`\log P(\text{merged}_e)` under :math:`\mathrm{Bernoulli}(p_e)`
            :obj:`[E]`, for score-function estimators (``estimator="score"``).
    """

    edge_index: Tensor
    cluster: Tensor
    batch: Tensor
    edge_weight: Tensor
    node_weight: Tensor
    merge_prob: Tensor
    merged: Tensor
    log_prob: Tensor


class PoolOutput(NamedTuple):
    r"""The output of :class:`ThresholdMergePool`: unpacks like
    :class:`~torch_geometric.nn.pool.EdgePooling`'s,
    ``x, edge_index, batch, unpool_info = pool(x, edge_index, batch)``, and reads
    :class:`UnpoolInfo`'s other fields by name (:obj:`out.edge_weight`,
    :obj:`out.node_weight`, :obj:`out.cluster`, :obj:`out.merge_prob`,
    :obj:`out.merged`, :obj:`out.log_prob`).

    Fields:
        x: pooled node features :obj:`[C, F]`.
        edge_index: coarsened, coalesced edges without self-loops :obj:`[2, G]`.
        batch: graph of each output node :obj:`[C]` (sorted if the input was).
        unpool_info: :class:`UnpoolInfo`, for :meth:`ThresholdMergePool.unpool`.
    """

    x: Tensor
    edge_index: Tensor
    batch: Tensor
    unpool_info: UnpoolInfo

    @property
    def edge_weight(self) -> Tensor:
        """Pooled edge weights :obj:`[G]` (:attr:`UnpoolInfo.edge_weight`)."""
        return self.unpool_info.edge_weight

    @property
    def node_weight(self) -> Tensor:
        """Node masses :obj:`[C]` (:attr:`UnpoolInfo.node_weight`)."""
        return self.unpool_info.node_weight

    @property
    def cluster(self) -> Tensor:
        """Output node of each input node :obj:`[N]`."""
        return self.unpool_info.cluster

    @property
    def merge_prob(self) -> Tensor:
        """:math:`p_e` of each input edge :obj:`[E]`."""
        return self.unpool_info.merge_prob

    @property
    def merged(self) -> Tensor:
        """Hard merge decision of each input edge :obj:`[E]`."""
        return self.unpool_info.merged

    @property
    def log_prob(self) -> Tensor:
        r""":math:`\log P(\text{merged}_e)` :obj:`[E]`."""
        return self.unpool_info.log_prob


#: Edges per chunk in the cosine kernels: keeps each [chunk, F] temporary near 4 MiB so
#: the allocator reuses it instead of mapping (and page-faulting) fresh memory on graphs
#: with millions of edges.
_CHUNK_ELEMENTS = 1 << 20


def _chunks(num_edges: int, num_features: int) -> list[tuple[int, int]]:
    step = max(1, _CHUNK_ELEMENTS // max(num_features, 1))
    return [(i, min(i + step, num_edges)) for i in range(0, num_edges, step)]


class _EdgeCosine(torch.autograd.Function):
    """Cosine of the end nodes of every edge with a hand-written, chunked backward:
    autograd's backward of ``x[row]`` (index_put with accumulate) was the slowest step
    on CPU, and [E, F] temporaries dominated the time on large graphs."""

    @staticmethod
    def forward(ctx, x: Tensor, row: Tensor, col: Tensor) -> Tensor:
        norm = x.norm(dim=-1)
        # A zero vector gets inverse norm 0: cosine 0 and gradient 0, never NaN.
        inv = torch.where(norm > 1e-12, norm.clamp_min(1e-12).reciprocal(), 0.0)
        inv_prod = inv.index_select(0, row) * inv.index_select(0, col)
        chunks = _chunks(row.numel(), x.size(1))
        if len(chunks) <= 1:  # small graph: keep the gathered rows for the backward
            x_row, x_col = x.index_select(0, row), x.index_select(0, col)
            dot = torch.linalg.vecdot(x_row, x_col)
            gathered = (x_row, x_col)
        else:
            dot = torch.cat([
                torch.linalg.vecdot(x.index_select(0, row[a:b]), x.index_select(0, col[a:b]))
                for a, b in chunks
            ])
            gathered = ()
        cos = dot * inv_prod
        ctx.save_for_backward(x, row, col, inv, inv_prod, cos, *gathered)
        return cos

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        x, row, col, inv, inv_prod, cos, *gathered = ctx.saved_tensors
        # d cos_uv / d x_u = x_v / (|x_u| |x_v|) - cos_uv x_u / |x_u|^2
        gc = grad * cos
        s = torch.zeros_like(inv).index_add_(0, row, gc).index_add_(0, col, gc)
        grad_x = x * (-s * inv * inv).unsqueeze(-1)  # one [N, F] pass, no zero fill
        a = (grad * inv_prod).unsqueeze(-1)
        if gathered:
            grad_x.index_add_(0, row, gathered[1] * a)
            grad_x.index_add_(0, col, gathered[0] * a)
        else:
            for lo, hi in _chunks(row.numel(), x.size(1)):
                r, c, w = row[lo:hi], col[lo:hi], a[lo:hi]
                grad_x.index_add_(0, r, x.index_select(0, c) * w)
                grad_x.index_add_(0, c, x.index_select(0, r) * w)
        return grad_x, None, None


def edge_similarity(x: Tensor, edge_index: Tensor, similarity: str = "cosine") -> Tensor:
    r"""Similarity of the two end nodes of every edge, :obj:`[E]`, in O(E).

    :obj:`"cosine"` lies in :math:`[-1, 1]`, :obj:`"half_cosine"` is
    :math:`(1 + \cos) / 2 \in [0, 1]`. A zero feature vector has cosine 0 with
    everything (and zero gradient), never NaN.
    """
    cos = _EdgeCosine.apply(x.flatten(1), edge_index[0], edge_index[1])
    if similarity == "half_cosine":
        return 0.5 * (1.0 + cos)
    return cos


def merge_logit(score: Tensor, theta: Tensor, tau: float = 1.0, eps: float = 1e-6) -> Tensor:
    r"""Logit of the relaxed merge probability,
    :math:`z_e = (\mathrm{logit}(\mathrm{clip}(s_e, \epsilon, 1 - \epsilon)) - \theta) / \tau`,
    so :math:`p_e = \sigma(z_e)` and :math:`z_e > 0 \iff s_e > \sigma(\theta)`
    (inside the clip). Taking the margin in logit space keeps :math:`p_e` from
    saturating when the threshold nears 1, where near-duplicate features sit."""
    z = torch.logit(score, eps=eps) - theta
    return z if tau == 1.0 else z / tau


def standardize_per_graph(
    value: Tensor, edge_batch: Tensor, dim_size: int, eps: float = 1e-4
) -> Tensor:
    r"""Standardise :obj:`value` :obj:`[E]` within each graph,
    :math:`(v_e - \mu_g) / \sqrt{\sigma_g^2 + \epsilon}`, with the mean and the (biased)
    variance over the edges of the graph :math:`g` of each edge. :obj:`dim_size` bounds
    the graph ids (the node count does; a static size keeps :mod:`torch.compile` free of
    a host sync). A graph whose edges all score alike gets 0 everywhere."""
    count = value.new_zeros(dim_size).index_add_(0, edge_batch, torch.ones_like(value))
    count = count.clamp(min=1.0)
    mean = value.new_zeros(dim_size).index_add_(0, edge_batch, value) / count
    d = value - mean.index_select(0, edge_batch)
    var = value.new_zeros(dim_size).index_add_(0, edge_batch, d * d) / count
    return d * torch.rsqrt(var + eps).index_select(0, edge_batch)


def forced_merges(z: Tensor, edge_batch: Tensor, num_clusters: Tensor) -> Tensor:
    r"""Merge decisions that give graph :math:`g` exactly :obj:`num_clusters[g]` clusters
    when its candidate edges form one tree (a chain, the text graph): the
    :math:`E_g - k_g + 1` edges with the highest merge logit merge, the other
    :math:`k_g - 1` are cut. :math:`k_g` is clipped into :math:`[1, E_g + 1]`. A forest of
    :math:`c` trees gets :math:`k_g + c - 1` clusters; with cycles, merged edges can be
    redundant and the count can fall below :math:`k_g`. O(E log E).

    The training analogue of teacher forcing: the model still chooses *where* the
    boundaries go (its own ranking of :math:`z`), the target only says how many, and
    :math:`-\log P(m)` of these decisions trains the threshold decision to agree.

    Args:
        z (torch.Tensor): merge logits :obj:`[E]`.
        edge_batch (torch.Tensor): graph of each edge :obj:`[E]`.
        num_clusters (torch.Tensor): wanted clusters per graph :obj:`[B]`.
    Returns a bool :obj:`[E]`.
    """
    num_edges = z.numel()
    if num_edges == 0:
        return z.new_zeros(0, dtype=torch.bool)
    # Sort by graph, then by descending logit; rank = position inside the graph's run.
    order = torch.argsort(z.detach(), descending=True, stable=True)
    order = order[torch.argsort(edge_batch[order], stable=True)]
    per_graph = torch.bincount(edge_batch, minlength=num_clusters.numel())
    start = per_graph.cumsum(0) - per_graph
    sorted_batch = edge_batch[order]
    rank = torch.arange(num_edges, device=z.device) - start[sorted_batch]
    cuts = (num_clusters.to(per_graph.device) - 1).clamp(min=0)
    keep = (per_graph - cuts).clamp(min=0)
    merged = torch.empty(num_edges, dtype=torch.bool, device=z.device)
    merged[order] = rank < keep[sorted_batch]
    return merged


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


def _coalesce(cu: Tensor, cv: Tensor, num_clusters: int) -> tuple[Tensor, ...]:
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


def _bridge_weight(
    kept: Tensor,
    size: Tensor,
    cu: Tensor,
    num_clusters: int,
    coarse: tuple[Tensor, ...],
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:
    r""":math:`\kappa_e` of :func:`expected_node_share` and :math:`\lambda_e` of
    :func:`expected_edge_share` for every input edge, each :obj:`[E]`."""
    coarse_edge_index, edge_id, inverse, key, count = coarse
    size = size.to(dtype)
    num_kept = torch.bincount(cu, weights=kept.to(dtype), minlength=num_clusters).to(dtype)
    deg = torch.bincount(coarse_edge_index.view(-1), minlength=num_clusters).to(dtype)
    per_cluster = torch.stack([
        (size - 1.0) / num_kept.clamp(min=1.0),
        torch.where(deg > 0, 1.0 / deg.clamp(min=1.0), 0.0),
    ], dim=1)
    per_edge = torch.where(kept.unsqueeze(1), per_cluster.index_select(0, cu), 0.0)
    kappa, lam = per_edge[:, 0].contiguous(), per_edge[:, 1].contiguous()
    num_coarse = key.numel()
    if num_coarse > 0:
        mult = count.to(dtype)
        # Add the reverse direction (found by search); DAG-ordered edges have none.
        if not bool((coarse_edge_index[0] < coarse_edge_index[1]).all()):
            rev = coarse_edge_index[1] * num_clusters + coarse_edge_index[0]
            pos = torch.searchsorted(key, rev).clamp(max=num_coarse - 1)
            found = key.index_select(0, pos) == rev
            mult = mult + torch.where(found, mult.index_select(0, pos), 0.0)
        kappa[edge_id] = mult.reciprocal().index_select(0, inverse)
    return kappa, lam


def expected_node_share(
    merge_prob: Tensor, kept: Tensor, cluster: Tensor, edge_index: Tensor, num_clusters: int
) -> Tensor:
    r"""Each cluster's share :math:`w_c` of the expected number of clusters, :obj:`[C]`
    (the surrogate whose gradient :class:`ThresholdMergePool` passes straight through
    its node masses; a plain-autograd reference for the fused backward).

    With every edge merging independently with probability :math:`p_e`,
    :math:`\partial\, \mathbb{E}[\#\text{clusters}] / \partial p_e = -P(e \text{ is a bridge})`.
    The share replaces that probability by :math:`\kappa_e`, its value at the hard
    partition, and spreads the expectation over the clusters:

    .. math::
        w_c = 1 + \sum_{e \in K_c} \kappa_e (1 - p_e)
              - \tfrac12 \sum_{e \in \partial c} \kappa_e p_e,
        \qquad \sum_c w_c = N - \sum_e \kappa_e p_e

    with :math:`K_c` the kept (merged, non-loop) edges inside cluster :math:`c`,
    :math:`\partial c` the edges leaving or entering it,
    :math:`\kappa_e = (n_c - 1) / |K_c|` for kept edges (a spanning tree of the
    :math:`n_c` nodes has :math:`n_c - 1` bridges), :math:`\kappa_e = 1 / m_{ab}` for an
    edge between clusters :math:`a \ne b` joined by :math:`m_{ab}` input edges in either
    direction, and :math:`\kappa_e = 0` for non-merged edges inside a cluster (no
    bridge). On a forest stored once or in both directions (chains: the text graph)
    this is exact, :math:`\sum_c w_c = N - \sum_e p_e = \mathbb{E}[\#\text{clusters}]`
    (the two directions of an edge count as one decision); on graphs with cycles it is
    a first-order approximation.

    Args:
        merge_prob: :math:`p_e` :obj:`[E]`.
        kept: bool :obj:`[E]`, merged and not a self-loop.
        cluster, edge_index, num_clusters: the hard partition and the input edges.
    """
    cu, cv = cluster[edge_index[0]], cluster[edge_index[1]]
    coarse = _coalesce(cu, cv, num_clusters)
    size = torch.bincount(cluster, minlength=num_clusters)
    kappa = _bridge_weight(kept, size, cu, num_clusters, coarse, merge_prob.dtype)[0]
    inner = torch.where(kept, kappa * (1.0 - merge_prob), 0.0)
    boundary = torch.where(cu != cv, -0.5 * kappa * merge_prob, 0.0)
    index = torch.cat([cu, cu, cv])
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
    the order of :func:`coarsen_edges` (the surrogate whose gradient
    :class:`ThresholdMergePool` passes straight through its edge weights):

    .. math::
        M_g = \prod_{e \to g} (1 - p_e) + \lambda_a A_a + \lambda_b A_b, \qquad
        A_c = \sum_{e \in K_c} (1 - p_e)

    for :math:`g = (a \to b)`. The product is the probability that no input edge of
    :math:`g` merges (a directed coarse edge coalesces the input edges from :math:`a` to
    :math:`b` and is contracted if any of them merges; :math:`p` clipped at
    :math:`1 - \epsilon`); :math:`A_c` counts the kept edges of cluster :math:`c` that
    would come back as edges if they did not merge, shared among the :math:`1 /
    \lambda_c` coarse edges at :math:`c` (lost for a cluster without coarse edges, e.g. a
    graph merged into one node; its node mass still carries that gradient). On a chain
    with at least two clusters :math:`\sum_g M_g = \sum_e (1 - p_e)`, the expected edge
    count, exactly; on graphs with cycles :math:`A_c` overcounts (first order)."""
    cu, cv = cluster[edge_index[0]], cluster[edge_index[1]]
    coarse = _coalesce(cu, cv, num_clusters)
    size = torch.bincount(cluster, minlength=num_clusters)
    lam = _bridge_weight(kept, size, cu, num_clusters, coarse, merge_prob.dtype)[1]
    coarse_edge_index, edge_id, inverse = coarse[:3]
    q = merge_prob[edge_id].clamp(max=1.0 - eps)
    survival = torch.exp(scatter(torch.log1p(-q), inverse, 0, coarse_edge_index.size(1)))
    # lam_e = 1 / deg(c_e) on kept edges: A_c / deg(c) summed per cluster
    back = scatter(lam * (1.0 - merge_prob), cu, 0, num_clusters, reduce="sum")
    return survival + back[coarse_edge_index[0]] + back[coarse_edge_index[1]]


class _ExpectedCounts(torch.autograd.Function):
    r"""Straight-through expected counts in one autograd node.

    Forward: node masses :obj:`[C]`, all exactly 1, and the pooled edge weights
    :obj:`[G]` unchanged (1 without input weights), i.e. times multipliers :math:`M_g = 1`.
    Backward: the gradient of :func:`expected_node_share` and :func:`expected_edge_share`
    with respect to :math:`p` (the tests check that they agree), written out because
    those references build ~40 autograd nodes:

    .. math::
        \frac{\partial L}{\partial p_e} = -\frac{\kappa_e}{2}
        \Big(\frac{\partial L}{\partial n'_{c_u}} + \frac{\partial L}{\partial n'_{c_v}}\Big)
        - \frac{\partial L}{\partial M_g} \prod_{e' \to g,\, e' \ne e} (1 - p_{e'})
        - \lambda_e \sum_{g \ni c_u} \frac{\partial L}{\partial M_g}
    """

    @staticmethod
    def forward(ctx, p, weight, kappa, lam, cu, cv, coarse_edge_index, edge_id, inverse,
                num_clusters, eps):
        ctx.save_for_backward(p, weight, kappa, lam, cu, cv, coarse_edge_index, edge_id, inverse)
        ctx.eps = eps
        node_weight = p.new_ones(num_clusters)
        if weight is None:
            return node_weight, p.new_ones(coarse_edge_index.size(1))
        return node_weight, weight.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_node, grad_weight):
        p, weight, kappa, lam, cu, cv, coarse_edge_index, edge_id, inverse = ctx.saved_tensors
        grad_p = (grad_node.index_select(0, cu) + grad_node.index_select(0, cv)) * kappa
        grad_p = -0.5 * grad_p
        if edge_id.numel() > 0:
            # d(w M)/dM with M = 1: the gradient reaching the multiplier M_g
            grad_mult = grad_weight if weight is None else grad_weight * weight
            grad_mult = grad_mult.reshape(grad_mult.size(0), -1).sum(-1)
            pe = p.index_select(0, edge_id)
            log_q = torch.log1p(-pe.clamp(max=1.0 - ctx.eps))
            log_s = log_q.new_zeros(grad_mult.numel()).index_add_(0, inverse, log_q)
            # prod over the other parallel edges; the clip's gradient is zero
            others = torch.exp(log_s.index_select(0, inverse) - log_q) * (pe <= 1.0 - ctx.eps)
            grad_p.index_add_(0, edge_id, -grad_mult.index_select(0, inverse) * others)
            at = grad_node.new_zeros(grad_node.numel())
            at.index_add_(0, coarse_edge_index[0], grad_mult)
            at.index_add_(0, coarse_edge_index[1], grad_mult)
            grad_p -= lam * at.index_select(0, cu)
        grad_w = grad_weight if weight is not None and ctx.needs_input_grad[1] else None
        return (grad_p, grad_w) + (None,) * 9


class _Quotient(NamedTuple):
    cluster: Tensor
    num_clusters: int
    size: Tensor
    batch: Tensor
    edge_index: Tensor
    edge_id: Tensor
    inverse: Tensor
    cu: Tensor
    cv: Tensor
    kappa: Tensor | None
    lam: Tensor | None


@torch.compiler.disable
def _quotient(
    edge_index: Tensor,
    kept: Tensor,
    batch: Tensor,
    num_nodes: int,
    method: str,
    dtype: torch.dtype | None,
) -> _Quotient:
    """All integer bookkeeping of the partition in one place: data-dependent shapes,
    host syncs and scipy, kept out of :mod:`torch._dynamo` as a single graph break."""
    cluster, num_clusters = connected_components(edge_index[:, kept], num_nodes, method)
    out_batch = batch.new_empty(num_clusters).scatter_(0, cluster, batch)
    size = torch.bincount(cluster, minlength=num_clusters)
    cu = cluster.index_select(0, edge_index[0])
    cv = cluster.index_select(0, edge_index[1])
    coarse = _coalesce(cu, cv, num_clusters)
    coarse_edge_index, edge_id, inverse = coarse[:3]
    kappa = lam = None
    if dtype is not None:
        kappa, lam = _bridge_weight(kept, size, cu, num_clusters, coarse, dtype)
    return _Quotient(
        cluster, num_clusters, size, out_batch, coarse_edge_index, edge_id, inverse, cu, cv,
        kappa, lam,
    )


class ThresholdMergePool(torch.nn.Module):
    r"""Learnable-threshold quotient-graph pooling: merge every edge whose end nodes
    are more similar than :math:`\sigma(\theta)`, contract the connected components of
    the merged edges into one node each, and give :math:`\theta` and the features a
    gradient through the expected node and edge counts.

    Forward (hard; a valid quotient graph). For every edge :math:`(i, j)`, in O(E):

    .. math::
        s_{ij} = \cos(\mathbf{h}_i, \mathbf{h}_j) \;\; \text{or} \;\;
        \tfrac12 (1 + \cos(\mathbf{h}_i, \mathbf{h}_j)), \qquad
        m_{ij} = [\, s_{ij} > \sigma(\theta) \,], \qquad
        p_{ij} = \sigma\!\left(\frac{\mathrm{logit}(s_{ij}) - \theta}{\tau}\right)

    with :math:`\mathbf{h} = \mathbf{x}` (or a learned projection :math:`\mathbf{W}
    \mathbf{x}`; off by default, so the merged set is exactly the edges with cosine
    :math:`> \sigma(\theta)`); :math:`\mathrm{logit}(s)` uses :math:`s` clipped into
    :math:`(\epsilon, 1 - \epsilon)`, :math:`m_{ij} = [p_{ij} > \frac12]`. The clusters are
    the connected components of the merged edges (direction ignored), i.e. the classes of
    the smallest equivalence relation containing them; edges never join two graphs of a
    batch in PyG, and merges across graphs are masked out anyway. Output nodes are
    numbered by their smallest input node (a chain with contiguous merges stays a chain
    in reading order, :obj:`batch` stays sorted), and

    .. math::
        \mathbf{x}'_c = \mathrm{reduce}_{i \in c}\, \mathbf{x}_i, \qquad
        \mathcal{E}' = \{ (c_i, c_j) : (i, j) \in \mathcal{E},\, c_i \ne c_j \},
        \qquad w'_{ab} = \mathrm{edge\_reduce}_{(i,j) \to (a,b)}\, w_{ij}

    (reduce: mean, max, sum, or attention :math:`\sum_{i \in c}
    \mathrm{softmax}_c(\mathbf{a}^\top \mathbf{x}_i)\, \mathbf{x}_i`; the coarse edges are
    coalesced, without self-loops).

    Backward (:obj:`estimator="counts"`, default). Under independent
    :math:`\mathrm{Bernoulli}(p_e)` merges the expected node count of a chain is
    :math:`N - \sum_e p_e` and its expected edge count :math:`\sum_e (1 - p_e)`. The
    output carries node masses :math:`n'_c = 1` whose gradient is that of cluster
    :math:`c`'s share :math:`w_c` of the expected node count
    (:func:`expected_node_share`), and edge weights whose value is :math:`w'_{ab}` and
    whose gradient is that of :math:`w'_{ab} M_{ab}`, with :math:`M_{ab}` the coarse
    edge's share of the expected edge count (:func:`expected_edge_share`: the
    probability :math:`\prod (1 - p)` that none of its input edges merges, plus a share
    of the merged edges at its ends that would come back):

    .. math::
        n'_c = 1 + w_c - \mathrm{sg}(w_c), \qquad
        w'_{ab} \leftarrow w'_{ab}\, (1 + M_{ab} - \mathrm{sg}(M_{ab}))

    (:math:`\mathrm{sg}` = stop-gradient). Both sums are exact on forests (chains, the
    text graph; :math:`\sum_c w_c = N - \sum_e p_e`), first order on graphs with cycles.
    A loss that uses the masses (e.g. as optimal transport marginals or a count) thus
    sees "merge more" and "merge less"; the gradient reaches :math:`\theta` and, through
    :math:`p`, the features, which also get the ordinary gradient of the reduction.
    The estimate is the gradient of a loss linearised at the hard partition: it is off
    where the loss is curved over the spread of the partition (e.g. zero when the hard
    count hits a count target exactly); :obj:`stochastic=True` evaluates it at sampled
    partitions instead, which is exact in expectation for losses linear in the masses.

    :obj:`estimator="score"`: in training mode the decisions are sampled,
    :math:`m_e \sim \mathrm{Bernoulli}(p_e)`, masses and weights carry no count gradient,
    and :obj:`log_prob` gives :math:`\log P(m_e)`; combine :math:`K \ge 2` samples with
    :meth:`score_function_loss` (leave-one-out baseline). Unbiased, K forward passes.

    Args:
        in_channels (int): Size of each input sample.
        reduce (str, optional): Feature reduction per cluster, :obj:`"mean"`,
            :obj:`"max"`, :obj:`"sum"` or :obj:`"attention"`. (default: :obj:`"mean"`)
        threshold (float, optional): Initial :math:`\sigma(\theta)`. (default: :obj:`0.5`)
        tau (float, optional): Temperature of :math:`p` (gradient only; the hard
            decision does not depend on it). (default: :obj:`1.0`)
        similarity (str, optional): :obj:`"cosine"` or :obj:`"half_cosine"`
            (:math:`(1+\cos)/2`, which keeps a gradient for negative cosines; with
            :obj:`tau=4` the recommended setting when the features are trained through
            the pool). (default: :obj:`"cosine"`)
        proj_channels (int, optional): If set, score with the cosine of a learned
            projection :math:`\mathbf{W}\mathbf{x}` to this size. (default: :obj:`None`)
        edge_reduce (str, optional): Reduction of the input edge weights that coalesce
            into one coarse edge (:obj:`"mean"`, :obj:`"sum"`, :obj:`"max"`,
            :obj:`"min"`, :obj:`"mul"`). Without input weights the pooled weight is 1.
            (default: :obj:`"mean"`)
        estimator (str, optional): :obj:`"counts"` or :obj:`"score"`.
            (default: :obj:`"counts"`)
        stochastic (bool, optional): In training mode draw the decisions from
            :math:`\mathrm{Bernoulli}(p_e)` instead of thresholding (always so for
            :obj:`estimator="score"`); evaluation mode always thresholds.
            (default: :obj:`False`)
        components (str, optional): Connected-components method, :obj:`"auto"`,
            :obj:`"torch"` or :obj:`"scipy"` (see :func:`connected_components`).
            (default: :obj:`"auto"`)
        eps (float, optional): Clip of :math:`s` for the logit. (default: :obj:`1e-6`)

    Shapes:
        - **input:** node features :math:`(N, F)`, edge indices :math:`(2, E)`, batch
          vector :math:`(N)` *(optional)*, edge weights :math:`(E)` or :math:`(E, D)`
          *(optional)*
        - **output:** :class:`PoolOutput` ``(x, edge_index, batch, unpool_info)`` with
          :math:`(C, F)`, :math:`(2, G)`, :math:`(C)` and :class:`UnpoolInfo`
          (:obj:`edge_weight` :math:`(G)`, :obj:`node_weight` :math:`(C)`,
          :obj:`cluster` :math:`(N)`, :obj:`merge_prob`, :obj:`merged`,
          :obj:`log_prob` :math:`(E)`), also readable as :obj:`out.edge_weight` etc.
    """

    def __init__(
        self,
        in_channels: int,
        reduce: str = "mean",
        threshold: float = 0.5,
        tau: float = 1.0,
        similarity: str = "cosine",
        proj_channels: int | None = None,
        edge_reduce: str = "mean",
        estimator: str = "counts",
        stochastic: bool = False,
        components: str = "auto",
        eps: float = 1e-6,
        score_norm: str | None = None,
    ):
        super().__init__()
        if score_norm is None:
            score_norm = "graph" if proj_channels is None else "none"
        for name, value, options in [
            ("score_norm", score_norm, SCORE_NORM),
            ("reduce", reduce, REDUCE),
            ("similarity", similarity, SIMILARITY),
            ("edge_reduce", edge_reduce, EDGE_REDUCE),
            ("estimator", estimator, ESTIMATOR),
            ("components", components, METHODS),
        ]:
            if value not in options:
                raise ValueError(f"{name} must be one of {options} (got {value!r})")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must lie in (0, 1) (got {threshold})")
        if tau <= 0:
            raise ValueError(f"tau must be positive (got {tau})")
        self.in_channels = in_channels
        self.reduce = reduce
        self.threshold = threshold
        self.tau = tau
        self.similarity = similarity
        self.proj_channels = proj_channels
        self.edge_reduce = edge_reduce
        self.estimator = estimator
        self.stochastic = stochastic
        self.components = components
        self.eps = eps
        self.score_norm = score_norm

        self.theta = Parameter(torch.empty(()))
        self.proj = Linear(in_channels, proj_channels, bias=False) if proj_channels else None
        self.att = Linear(in_channels, 1) if reduce == "attention" else None
        self.reset_parameters()

    def reset_parameters(self):
        r"""Resets all learnable parameters of the module."""
        with torch.no_grad():
            if self.score_norm == "graph":  # theta in standard deviations: a quantile
                self.theta.fill_(float(torch.special.ndtri(torch.tensor(self.threshold))))
            else:
                self.theta.fill_(math.log(self.threshold / (1.0 - self.threshold)))
        if self.proj is not None:
            self.proj.reset_parameters()
        if self.att is not None:
            self.att.reset_parameters()

    def forward(
        self,
        x: Tensor,
        edge_index: Tensor,
        batch: Tensor | None = None,
        *,
        edge_weight: Tensor | None = None,
        merged: Tensor | None = None,
        num_clusters: Tensor | None = None,
    ) -> PoolOutput:
        r"""Forward pass.

        Args:
            x (torch.Tensor): Node features :math:`(N, F)`.
            edge_index (torch.Tensor): Edge indices :math:`(2, E)`.
            batch (torch.Tensor, optional): Batch vector :math:`(N)`.
                (default: :obj:`None`, one graph)
            edge_weight (torch.Tensor, optional): Edge weights :math:`(E)` or edge
                features :math:`(E, D)`. (default: :obj:`None`)
            merged (torch.Tensor, optional): Bool :math:`(E)` decisions to use instead
                of the threshold (held fixed, e.g. for gradcheck or for enumerating merge
                patterns). (default: :obj:`None`)
            num_clusters (torch.Tensor, optional): Clusters wanted per graph :math:`(B)`:
                merge the highest-logit edges of each graph instead of thresholding
                (:func:`forced_merges`; exact on chains). Training with it and the loss
                :math:`-\overline{\log P(m)}` on :obj:`log_prob` teaches the threshold the
                right count. (default: :obj:`None`)
        """
        num_nodes = x.size(0)
        if batch is None:
            batch = edge_index.new_zeros(num_nodes)
        row, col = edge_index[0], edge_index[1]

        score, z = self._score(x, edge_index, batch)
        p = torch.sigmoid(z)
        if merged is None and num_clusters is not None:
            merged = forced_merges(z, batch.index_select(0, row), num_clusters)
        if merged is None:
            if self.training and (self.stochastic or self.estimator == "score"):
                merged = torch.bernoulli(p.detach()).bool()
            elif self.score_norm == "graph":
                merged = z > 0
            else:  # the exact rule, also outside the logit's clip
                merged = score > torch.sigmoid(self.theta)
            # PyG batches have no edges between graphs; this makes it a guarantee.
            merged = merged & (batch.index_select(0, row) == batch.index_select(0, col))
        merged = merged.bool()
        log_prob = F.logsigmoid(torch.where(merged, z, -z))

        kept = merged & (row != col)
        # Forced counts carry no count gradient: the target fixed the count, and
        # -log_prob of the forced decisions is what trains the threshold then.
        counts = (self.estimator == "counts" and num_clusters is None
                  and torch.is_grad_enabled() and p.requires_grad)
        q = _quotient(
            edge_index, kept, batch, num_nodes, self.components, p.dtype if counts else None
        )

        out_x = self._reduce(x, q.cluster, q.num_clusters, q.size)
        num_coarse = q.edge_index.size(1)
        out_edge_weight = None
        if edge_weight is not None:
            out_edge_weight = scatter(
                edge_weight[q.edge_id], q.inverse, 0, num_coarse, reduce=self.edge_reduce
            )

        if q.kappa is not None:
            node_weight, out_edge_weight = _ExpectedCounts.apply(
                p, out_edge_weight, q.kappa, q.lam, q.cu, q.cv, q.edge_index, q.edge_id,
                q.inverse, q.num_clusters, self.eps,
            )
        else:
            node_weight = x.new_ones(q.num_clusters)
            if out_edge_weight is None:
                out_edge_weight = x.new_ones(num_coarse)

        info = UnpoolInfo(edge_index, q.cluster, batch, out_edge_weight, node_weight, p,
                          merged, log_prob)
        return PoolOutput(out_x, q.edge_index, q.batch, info)

    def _score(
        self, x: Tensor, edge_index: Tensor, batch: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        h = x if self.proj is None else self.proj(x.flatten(1))
        score = edge_similarity(h, edge_index, self.similarity)
        if self.score_norm == "none":
            return score, merge_logit(score, self.theta, self.tau, self.eps)
        logit = torch.logit(score, eps=self.eps)
        edge_batch = (edge_index.new_zeros(edge_index.size(1)) if batch is None
                      else batch.index_select(0, edge_index[0]))
        z = standardize_per_graph(logit, edge_batch, max(x.size(0), 1)) - self.theta
        return score, z if self.tau == 1.0 else z / self.tau

    def learnt_threshold(self) -> float:
        r"""The threshold as a number in :math:`(0, 1)`: :math:`\sigma(\theta)` (a
        similarity) with :obj:`score_norm="none"`, :math:`\Phi(\theta)` (a quantile of
        a graph's standardised scores) with :obj:`score_norm="graph"`; equal to the
        :obj:`threshold` argument after :meth:`reset_parameters`."""
        theta = self.theta.detach().float()
        if self.score_norm == "graph":
            return float(torch.special.ndtr(theta))
        return float(torch.sigmoid(theta))

    def merge_logits(
        self, x: Tensor, edge_index: Tensor, batch: Tensor | None = None
    ) -> Tensor:
        r"""The logit :math:`z_e` of every edge's merge probability :math:`p_e =
        \sigma(z_e)` (:obj:`[E]`), differentiable w.r.t. :obj:`x` and :math:`\theta`:
        what a loss that marginalises over the merge decisions (e.g.
        :func:`~pyg_grapheme.loss.segmentation_nll` on chains) needs, with no forward
        pass of the quotient. With :obj:`score_norm="graph"` pass the :obj:`batch` the
        forward gets (the scores are standardised per graph)."""
        return self._score(x, edge_index, batch)[1]

    def _reduce(self, x: Tensor, cluster: Tensor, num_clusters: int, size: Tensor) -> Tensor:
        if self.reduce == "max":
            return scatter(x, cluster, 0, num_clusters, reduce="max")
        if self.att is not None:
            alpha = softmax(self.att(x.flatten(1)).view(-1), cluster, num_nodes=num_clusters)
            x = x * alpha.view(-1, *([1] * (x.dim() - 1)))
        # index_add_ (backward: index_select) is cheaper on CPU than scatter's
        # scatter_add_ with an index broadcast to x's shape.
        out = x.new_zeros((num_clusters,) + x.shape[1:]).index_add_(0, cluster, x)
        if self.reduce == "mean":
            # in place: no [C, F] copy
            out = out.div_(size.clamp(min=1).view(-1, *([1] * (x.dim() - 1))).to(x.dtype))
        return out

    @staticmethod
    def unpool(x: Tensor, unpool_info: UnpoolInfo) -> tuple[Tensor, Tensor, Tensor]:
        r"""Undoes a pooling step like :meth:`EdgePooling.unpool
        <torch_geometric.nn.pool.EdgePooling.unpool>`: copies every pooled node back to
        the input nodes of its cluster, :obj:`x[cluster]` (:obj:`[C, F] -> [N, F]`).

        Returns :obj:`(x, edge_index, batch)` of the input graph."""
        if not isinstance(unpool_info, UnpoolInfo):
            raise TypeError("unpool takes the UnpoolInfo of the forward "
                            f"(out.unpool_info), got {type(unpool_info).__name__}; for a "
                            "cluster vector use x[cluster]")
        return x[unpool_info.cluster], unpool_info.edge_index, unpool_info.batch

    @staticmethod
    def score_function_loss(losses: Tensor, log_probs: Tensor) -> Tensor:
        r"""Surrogate whose gradient is the score-function (REINFORCE) estimate with a
        leave-one-out baseline, plus the pathwise gradient of the losses:

        .. math::
            \frac1K \sum_k \Big[ L_k + \mathrm{sg}\big(L_k - \tfrac{1}{K-1}
            \textstyle\sum_{j \ne k} L_j\big) \log P(m^{(k)}) \Big]

        Args:
            losses (torch.Tensor): :obj:`[K, ...]`, the loss of each of :math:`K \ge 2`
                independent samples (e.g. per graph, :obj:`[K, B]`).
            log_probs (torch.Tensor): :obj:`[K, ...]`, the matching
                :math:`\log P(m^{(k)})`, e.g. :obj:`out.log_prob` summed per graph.

        Returns the mean over the samples (and any trailing dims, summed).
        """
        k = losses.size(0)
        if k < 2:
            raise ValueError("the leave-one-out baseline needs at least 2 samples")
        baseline = (losses.sum(0, keepdim=True) - losses) / (k - 1)
        advantage = (losses - baseline).detach()
        return (losses + advantage * log_probs).mean(0).sum()

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.in_channels}, reduce={self.reduce}, "
            f"threshold={self.learnt_threshold():.4g}, tau={self.tau}, "
            f"similarity={self.similarity}, score_norm={self.score_norm}, "
            f"estimator={self.estimator})"
        )
