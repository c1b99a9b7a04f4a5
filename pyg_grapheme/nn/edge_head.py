r"""EdgeHead: score the directed edges between the nodes of each graph (graph-shaped answers)."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["EdgeHead", "EdgeHeadOutput", "all_pairs"]


class EdgeHeadOutput(NamedTuple):
    r"""The output of :class:`EdgeHead` (:math:`P` scored pairs).

    Fields:
        edge_index: the scored ordered pairs :obj:`[2, P]` (source, target).
        edge_weight: soft edge probabilities :math:`\sigma(s_{ij}) \in [0, 1]` :obj:`[P]`.
        logit: the scores :math:`s_{ij}` :obj:`[P]` (for a BCE or a sparsity term).
    """

    edge_index: Tensor
    edge_weight: Tensor
    logit: Tensor

    def hard(self, threshold: float = 0.5) -> Tensor:
        """The predicted graph's edges at inference: the pairs whose weight exceeds
        ``threshold`` (default ``0.5``), :obj:`[2, E']`."""
        return self.edge_index[:, self.edge_weight > threshold]


def all_pairs(batch: Tensor, num_graphs: int | None = None) -> Tensor:
    r"""Every ordered pair :math:`(i, j)`, :math:`i \ne j`, of nodes of the same graph,
    :obj:`[2, \sum_g n_g (n_g - 1)]`, grouped by source node (nodes of a graph must be
    contiguous, PyG's layout; :obj:`batch` sorted)."""
    n = batch.numel()
    if n == 0:
        return batch.new_zeros(2, 0)
    num_graphs = int(batch.max()) + 1 if num_graphs is None else num_graphs
    sizes = torch.bincount(batch, minlength=num_graphs)
    start = torch.cumsum(sizes, 0) - sizes  # first node of each graph
    rep = sizes[batch]  # every node is paired with each node of its graph
    src = torch.arange(n, device=batch.device).repeat_interleave(rep)
    first = torch.cumsum(rep, 0) - rep  # first pair of each source node
    k = torch.arange(src.numel(), device=batch.device) - first[src]
    dst = start[batch[src]] + k
    keep = src != dst
    return torch.stack([src[keep], dst[keep]])


class EdgeHead(nn.Module):
    r"""Score every directed edge between the nodes of the same graph and return a soft
    graph (edge weights in :math:`[0, 1]`), the edge decoder of a graph-shaped answer.

    For nodes :math:`i \ne j` of one graph, with features :math:`\mathbf{x}` and
    (optionally) integer positions :math:`p` (e.g. the reading position of a pooled
    node's first grapheme):

    .. math::
        s_{ij} = \mathbf{w}^\top \mathrm{GELU}\big(\mathbf{W}_s \mathbf{x}_i
            + \mathbf{W}_t \mathbf{x}_j + \mathbf{R}_{\delta_{ij}} + \mathbf{W}_e
            \mathbf{e}_{ij} + \mathbf{b}\big)
            + \frac{(\mathbf{U}_s \mathbf{x}_i)^\top (\mathbf{U}_t \mathbf{x}_j)}{\sqrt{H}}
            + c,
        \qquad w_{ij} = \sigma(s_{ij})

    with :math:`\delta_{ij} = \mathrm{clip}(p_j - p_i, -D, D)` (signed, so direction is
    seen; :math:`\mathbf{R}` is learned, absent without positions) and optional pair
    features :math:`\mathbf{e}_{ij}` (``edge_dim``, e.g. a summary of the text between
    the two nodes) -- an additive MLP
    score plus a bilinear one (``bilinear=False`` drops the latter). The source and
    target projections are separate, so :math:`s_{ij} \ne s_{ji}` in general: the edges
    are directed. At inference :meth:`EdgeHeadOutput.hard` keeps :math:`w_{ij} > 0.5`.

    **Cost.** All ordered pairs within each graph are scored: :math:`O(\sum_g n_g^2 H)`
    time and memory (:math:`n_g` nodes of graph :math:`g`, :math:`H` hidden), i.e.
    :math:`O(m^2)` per output graph of :math:`m` nodes, never across graphs of a batch.
    The node projections are computed once per node (:math:`O(nFH)`); only the sum, the
    activation and the output product run per pair. Pass ``edge_index`` to score a
    sparse candidate set instead (:math:`O(EH)`).

    Args:
        in_channels: node feature size :math:`F`.
        hidden_channels: :math:`H` (default ``in_channels``).
        max_distance: :math:`D`, relative positions are clipped to :math:`[-D, D]`;
            ``0`` disables position features (default ``16``).
        bilinear: add the bilinear term (default ``True``).
        bias_init: initial :math:`c`; negative values start from a sparse graph
            (default ``0``: every edge at 0.5).
        edge_dim: size of the optional pair features :math:`\mathbf{e}_{ij}`
            (default ``None``: none).
        natural_gradient: backpropagate :math:`\partial\mathcal L/\partial w_{ij}` to
            the score unchanged, :math:`\partial\mathcal L/\partial s_{ij} :=
            \partial\mathcal L/\partial w_{ij}`, instead of the chain rule's
            :math:`w_{ij}(1 - w_{ij})\,\partial\mathcal L/\partial w_{ij}` (values
            unchanged). It is the natural gradient of the Bernoulli edge in its logit
            (Fisher information :math:`w(1-w)`; Amari 1998): an edge pushed to
            :math:`w \approx 0` keeps a gradient where the sigmoid's is
            :math:`\approx 0`. Measured harmful on the expression and DAG tasks
            (docs/expression.md): every pair's full gradient reaches the shared layers,
            the pairs that are no edge (most of :math:`m^2`) push all edges to 0 and the
            node labels were lost (a mechanism inferred from the logs, not isolated).
            Default ``False``.

    Shapes:
        - **input:** ``x`` :obj:`[C, F]`, ``batch`` :obj:`[C]` (sorted; ``None`` = one
          graph), ``pos`` :obj:`[C]` long (optional), ``edge_index`` :obj:`[2, P]`
          (optional candidates; default :func:`all_pairs`), ``edge_attr`` :obj:`[P, edge_dim]`
          (with ``edge_dim``; row ``p`` belongs to pair ``p`` of ``edge_index``, so pass
          ``edge_index`` too)
        - **output:** :class:`EdgeHeadOutput` with :obj:`[2, P]`, :obj:`[P]`, :obj:`[P]`
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int | None = None,
        max_distance: int = 16,
        bilinear: bool = True,
        bias_init: float = 0.0,
        edge_dim: int | None = None,
        natural_gradient: bool = False,
    ) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if max_distance < 0:
            raise ValueError(f"max_distance must be >= 0, got {max_distance}")
        self.in_channels = in_channels
        self.hidden_channels = hidden = hidden_channels or in_channels
        self.max_distance = max_distance
        self.bilinear = bilinear
        self.bias_init = bias_init
        self.edge_dim = edge_dim
        self.natural_gradient = natural_gradient
        self.lin_edge = nn.Linear(edge_dim, hidden, bias=False) if edge_dim else None
        self.lin_src = nn.Linear(in_channels, hidden)
        self.lin_dst = nn.Linear(in_channels, hidden, bias=False)
        self.rel = nn.Embedding(2 * max_distance + 1, hidden) if max_distance else None
        self.out = nn.Linear(hidden, 1)
        if bilinear:
            self.bil_src = nn.Linear(in_channels, hidden, bias=False)
            self.bil_dst = nn.Linear(in_channels, hidden, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.lin_src.reset_parameters()
        self.lin_dst.reset_parameters()
        self.out.reset_parameters()
        if self.lin_edge is not None:
            self.lin_edge.reset_parameters()
        with torch.no_grad():
            self.out.bias.fill_(self.bias_init)
        if self.rel is not None:
            nn.init.normal_(self.rel.weight, 0.0, 0.02)
        if self.bilinear:
            self.bil_src.reset_parameters()
            self.bil_dst.reset_parameters()

    def forward(
        self,
        x: Tensor,
        batch: Tensor | None = None,
        pos: Tensor | None = None,
        edge_index: Tensor | None = None,
        edge_attr: Tensor | None = None,
    ) -> EdgeHeadOutput:
        if x.dim() != 2 or x.size(1) != self.in_channels:
            raise ValueError(
                f"EdgeHead expects node features of shape [C, {self.in_channels}], "
                f"got {tuple(x.shape)}"
            )
        if batch is None:
            batch = torch.zeros(x.size(0), dtype=torch.long, device=x.device)
        if batch.shape != (x.size(0),):
            raise ValueError(f"batch must have shape [{x.size(0)}], got {tuple(batch.shape)}")
        if pos is not None and pos.shape != (x.size(0),):
            raise ValueError(f"pos must have shape [{x.size(0)}], got {tuple(pos.shape)}")
        if (edge_attr is None) != (self.lin_edge is None):
            raise ValueError("edge_attr must be given exactly when edge_dim is set "
                             f"(edge_dim={self.edge_dim})")
        if edge_index is None:
            edge_index = all_pairs(batch)
        if edge_attr is not None and edge_attr.shape != (edge_index.size(1), self.edge_dim):
            raise ValueError(f"edge_attr must have shape [{edge_index.size(1)}, {self.edge_dim}]"
                             f", got {tuple(edge_attr.shape)}")
        src, dst = edge_index[0], edge_index[1]
        h = self.lin_src(x)[src] + self.lin_dst(x)[dst]
        if self.rel is not None and pos is not None:
            D = self.max_distance
            delta = (pos[dst] - pos[src]).clamp(-D, D) + D
            h = h + self.rel(delta)
        if self.lin_edge is not None:
            h = h + self.lin_edge(edge_attr)
        logit = self.out(F.gelu(h)).view(-1)
        if self.bilinear:
            a, b = self.bil_src(x), self.bil_dst(x)
            logit = logit + (a[src] * b[dst]).sum(-1) / self.hidden_channels ** 0.5
        weight = torch.sigmoid(logit)
        if self.natural_gradient:  # value sigmoid(s), gradient passed to s unscaled
            weight = weight.detach() + (logit - logit.detach())
        return EdgeHeadOutput(edge_index, weight, logit)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.in_channels}, hidden={self.hidden_channels}, "
            f"max_distance={self.max_distance}, bilinear={self.bilinear}"
            + (", natural_gradient=True" if self.natural_gradient else "") + ")"
        )
