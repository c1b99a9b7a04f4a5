r"""The layer: :class:`ThresholdMergePool` composes select (:mod:`.select`), connect
(:mod:`.quotient`) and reduce (a PyG :class:`~torch_geometric.nn.aggr.Aggregation`),
with the threshold's gradient from :mod:`.estimators`; :class:`PoolOutput`,
:class:`UnpoolInfo` and :meth:`ThresholdMergePool.unpool` mirror
:class:`~torch_geometric.nn.pool.EdgePooling`."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Linear, Parameter
from torch_geometric.nn.aggr import Aggregation, AttentionalAggregation
from torch_geometric.nn.resolver import aggregation_resolver
from torch_geometric.utils import scatter

from pyg_grapheme.nn.components import METHODS
from pyg_grapheme.nn.pool.estimators import (
    ESTIMATOR,
    _ExpectedCounts,
    bridge_weights,
    score_function_loss,
)
from pyg_grapheme.nn.pool.quotient import Quotient, quotient
from pyg_grapheme.nn.pool.select import (
    SCORE_NORM,
    SIMILARITY,
    clipped_logit,
    edge_similarity,
    forced_merges,
    merge_logit,
    standardize_per_graph,
)

#: The names ``reduce=`` (the alias of ``aggr=``) accepts.
REDUCE = ("mean", "max", "sum", "attention")
EDGE_REDUCE = ("mean", "sum", "max", "min", "mul")


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


class Selection(NamedTuple):
    r"""The select step's decisions (:meth:`ThresholdMergePool.select`), everything
    :meth:`ThresholdMergePool.connect` and :meth:`ThresholdMergePool.coarsen` need
    (:math:`N` input nodes, :math:`E` input edges).

    Fields:
        edge_index: the input edges :obj:`[2, E]`.
        batch: the input batch vector :obj:`[N]`.
        num_nodes: :math:`N`.
        merge_prob: relaxed merge probability :math:`p_e` :obj:`[E]`.
        merged: hard merge decisions :obj:`[E]` (bool).
        log_prob: :math:`\log P(\text{merged}_e)` :obj:`[E]`.
        kept: the merged edges that are not self-loops :obj:`[E]` (bool).
        counts: whether :meth:`~ThresholdMergePool.coarsen` attaches the expected-count
            gradient (``estimator="counts"``, no forced count, gradient enabled).
        merge_logit: the logit :math:`z_e` of :obj:`merge_prob` :obj:`[E]`, what
            :meth:`~ThresholdMergePool.merge_logits` returns for the same input (a model
            that needs both reads it here instead of scoring the edges twice).
    """

    edge_index: Tensor
    batch: Tensor
    num_nodes: int
    merge_prob: Tensor
    merged: Tensor
    log_prob: Tensor
    kept: Tensor
    counts: bool
    merge_logit: Tensor | None = None


class Partition(NamedTuple):
    r"""The connect step's result (:meth:`ThresholdMergePool.connect`): the
    :class:`~pyg_grapheme.nn.pool.Quotient` and, when the selection asks for the
    expected-count gradient, the estimator's bridge weights :math:`\kappa`,
    :math:`\lambda` :obj:`[E]` (:func:`~pyg_grapheme.nn.pool.estimators.bridge_weights`)."""

    quotient: Quotient
    kappa: Tensor | None
    lam: Tensor | None


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

    (reduce: any PyG :class:`~torch_geometric.nn.aggr.Aggregation`, by default the mean;
    :obj:`"attention"` is :math:`\sum_{i \in c} \mathrm{softmax}_c(\mathbf{a}^\top
    \mathbf{x}_i)\, \mathbf{x}_i`; the coarse edges are coalesced, without self-loops).

    Backward (:obj:`estimator="counts"`, default). Under independent
    :math:`\mathrm{Bernoulli}(p_e)` merges the expected node count of a chain is
    :math:`N - \sum_e p_e` and its expected edge count :math:`\sum_e (1 - p_e)`. The
    output carries node masses :math:`n'_c = 1` whose gradient is that of cluster
    :math:`c`'s share :math:`w_c` of the expected node count
    (:mod:`~pyg_grapheme.nn.pool.estimators`), and edge weights whose value is
    :math:`w'_{ab}` and whose gradient is that of :math:`w'_{ab} M_{ab}`, with
    :math:`M_{ab}` the coarse edge's share of the expected edge count (the probability
    :math:`\prod (1 - p)` that none of its input edges merges, plus a share of the
    merged edges at its ends that would come back):

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

    References: the contraction of merged edges follows EdgePooling (Diehl, "Edge
    Contraction Pooling for Graph Neural Networks", arXiv:1905.10990, 2019); the
    pass-through of the count gradient is a straight-through estimator (Bengio et al.,
    arXiv:1308.3432, 2013); the score function is REINFORCE (Williams, Machine Learning
    8, 1992) with the leave-one-out baseline of Kool et al. (ICLR workshop 2019).

    Args:
        in_channels (int): Size of each input sample.
        aggr (str or Aggregation, optional): Feature reduction per cluster: a PyG
            aggregation or its name (:obj:`"mean"`, :obj:`"max"`, :obj:`"sum"`, ...,
            resolved by :func:`~torch_geometric.nn.resolver.aggregation_resolver`), or
            :obj:`"attention"` (:class:`~torch_geometric.nn.aggr.AttentionalAggregation`
            with a gate :obj:`Linear(in_channels, 1)`). Node features :math:`(N, F, ...)`
            are aggregated flattened to :math:`(N, F \cdots)`. (default: :obj:`"mean"`)
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
        score_norm (str, optional): :obj:`"graph"` (standardise the logit scores within
            each graph; :math:`\theta` is then a quantile) or :obj:`"none"` (the absolute
            rule above). (default: :obj:`"graph"` without :obj:`proj_channels`, else
            :obj:`"none"`)
        reduce (str, optional): Alias of :obj:`aggr` for :obj:`"mean"`, :obj:`"max"`,
            :obj:`"sum"` or :obj:`"attention"` (the argument's name before
            :obj:`aggr`). (default: :obj:`None`)

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
        aggr: str | Aggregation = "mean",
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
        *,
        reduce: str | None = None,
    ):
        super().__init__()
        if reduce is not None:
            if reduce not in REDUCE:
                raise ValueError(f"reduce must be one of {REDUCE} (got {reduce!r})")
            if not (isinstance(aggr, str) and aggr in ("mean", reduce)):
                raise ValueError(f"pass aggr or its alias reduce, not both (got aggr={aggr!r}, "
                                 f"reduce={reduce!r})")
            aggr = reduce
        if score_norm is None:
            score_norm = "graph" if proj_channels is None else "none"
        for name, value, options in [
            ("score_norm", score_norm, SCORE_NORM),
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
        # a name, as MessagePassing keeps it (a module here would register twice)
        self.aggr = aggr if isinstance(aggr, str) else repr(aggr)
        self.reduce = self.aggr  # the name before aggr; __repr__ prints it
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
        if aggr == "attention":
            self.aggr_module = AttentionalAggregation(Linear(in_channels, 1))
        else:
            self.aggr_module = aggregation_resolver(aggr)
        self.register_load_state_dict_pre_hook(_rename_attention_gate)
        self.reset_parameters()

    @property
    def att(self) -> Linear | None:
        r"""The gate :math:`\mathbf{a}` of :obj:`aggr="attention"` (else :obj:`None`)."""
        return self.aggr_module.gate_nn if self.aggr == "attention" else None

    def reset_parameters(self) -> None:
        r"""Resets all learnable parameters of the module."""
        with torch.no_grad():
            if self.score_norm == "graph":  # theta in standard deviations: a quantile
                self.theta.fill_(float(torch.special.ndtri(torch.tensor(self.threshold))))
            else:
                self.theta.fill_(math.log(self.threshold / (1.0 - self.threshold)))
        if self.proj is not None:
            self.proj.reset_parameters()
        self.aggr_module.reset_parameters()

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
        r"""Forward pass: :meth:`select`, :meth:`connect` (the one
        :func:`torch.compile` graph break) and :meth:`coarsen`. A model that calls the
        three itself, from its own ``forward``, keeps that break in its own frame
        (called as a nested module the pool splits every frame of the call stack).

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
        sel = self.select(x, edge_index, batch, merged=merged, num_clusters=num_clusters)
        return self.coarsen(x, sel, self.connect(sel), edge_weight=edge_weight)

    def select(
        self,
        x: Tensor,
        edge_index: Tensor,
        batch: Tensor | None = None,
        *,
        merged: Tensor | None = None,
        num_clusters: Tensor | None = None,
    ) -> Selection:
        r"""The select step: scores, merge probabilities and the hard decisions of
        every edge (arguments as in :meth:`forward`). Shapes are those of the input: it
        compiles without a graph break."""
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
        return Selection(edge_index, batch, num_nodes, p, merged, log_prob, kept, counts, z)

    @torch.compiler.disable
    def connect(self, sel: Selection) -> Partition:
        r"""The connect step: the connected components of the kept edges, the coarse
        edges and (if :obj:`sel.counts`) the estimator's bridge weights. All the integer
        bookkeeping with data-dependent shapes (host syncs, scipy) is here, hidden from
        :mod:`torch._dynamo` as the pool's one graph break. A caller that composes
        :meth:`select`, :meth:`connect` and :meth:`coarsen` in its own ``forward`` (as
        :class:`~pyg_grapheme.nn.GraphTransformNet` does) keeps that break in its own
        frame: called inside a nested module call it splits the caller's graph too."""
        q = quotient(sel.edge_index, sel.kept, sel.batch, sel.num_nodes, self.components)
        if not sel.counts:
            return Partition(q, None, None)
        kappa, lam = bridge_weights(sel.kept, q, sel.merge_prob.dtype)
        return Partition(q, kappa, lam)

    def coarsen(
        self, x: Tensor, sel: Selection, part: Partition, edge_weight: Tensor | None = None
    ) -> PoolOutput:
        r"""The reduce step: the clusters' features (the aggregation), the coarse edges'
        weights and the count gradient, given :meth:`connect`'s partition. Its sizes
        are the partition's: it compiles without a graph break."""
        q, kappa, lam = part
        out_x = self.aggr_module(x.flatten(1), q.cluster, dim_size=q.num_clusters, dim=0)
        if x.dim() > 2:
            out_x = out_x.view(q.num_clusters, *x.shape[1:])
        num_coarse = q.edge_index.size(1)
        out_edge_weight = None
        if edge_weight is not None:
            out_edge_weight = scatter(
                edge_weight[q.edge_id], q.inverse, 0, num_coarse, reduce=self.edge_reduce
            )

        if kappa is not None:
            node_weight, out_edge_weight = _ExpectedCounts.apply(
                sel.merge_prob, out_edge_weight, kappa, lam, q.cu, q.cv, q.edge_index,
                q.edge_id, q.inverse, q.num_clusters, self.eps,
            )
        else:
            node_weight = x.new_ones(q.num_clusters)
            if out_edge_weight is None:
                out_edge_weight = x.new_ones(num_coarse)

        info = UnpoolInfo(sel.edge_index, q.cluster, sel.batch, out_edge_weight, node_weight,
                          sel.merge_prob, sel.merged, sel.log_prob)
        return PoolOutput(out_x, q.edge_index, q.batch, info)

    def _score(
        self, x: Tensor, edge_index: Tensor, batch: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        h = x if self.proj is None else self.proj(x.flatten(1))
        score = edge_similarity(h, edge_index, self.similarity)
        if self.score_norm == "none":
            return score, merge_logit(score, self.theta, self.tau, self.eps)
        logit = clipped_logit(score, self.eps)
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
        r"""Score-function surrogate with a leave-one-out baseline over :math:`K \ge 2`
        samples: :func:`~pyg_grapheme.nn.pool.estimators.score_function_loss`."""
        return score_function_loss(losses, log_probs)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.in_channels}, reduce={self.reduce}, "
            f"threshold={self.learnt_threshold():.4g}, tau={self.tau}, "
            f"similarity={self.similarity}, score_norm={self.score_norm}, "
            f"estimator={self.estimator})"
        )


def _rename_attention_gate(module, state_dict, prefix, *args) -> None:
    """State dicts from before the PyG aggregation kept the attention gate as ``att``."""
    for name in ("weight", "bias"):
        old = f"{prefix}att.{name}"
        if old in state_dict:
            state_dict[f"{prefix}aggr_module.gate_nn.{name}"] = state_dict.pop(old)
