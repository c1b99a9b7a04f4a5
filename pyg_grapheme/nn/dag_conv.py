"""DAGConv: message passing that keeps the direction of reading order."""

from __future__ import annotations

from torch import Tensor, nn
from torch_geometric.nn import MessagePassing
from torch_geometric.typing import Adj, OptTensor


class DAGConv(MessagePassing):
    r"""Direction-aware graph convolution for DAGs (e.g. text in reading order).

    Messages travel along the edges (from predecessors) and, with separate weights, against
    them (from successors), so a node can tell what comes before it from what comes after:

    .. math::
        \mathbf{m}^{\rightarrow}_i = \frac{1}{|\mathcal{N}^{-}(i)|}
            \sum_{j \in \mathcal{N}^{-}(i)} w_{ji}\, \mathbf{W}_{\rightarrow} \mathbf{h}_j,
        \qquad
        \mathbf{m}^{\leftarrow}_i = \frac{1}{|\mathcal{N}^{+}(i)|}
            \sum_{k \in \mathcal{N}^{+}(i)} w_{ik}\, \mathbf{W}_{\leftarrow} \mathbf{h}_k

    .. math::
        \mathbf{h}'_i = \mathrm{LN}\big(\mathbf{h}_i + \mathrm{GELU}(\mathbf{W}_0 \mathbf{h}_i
            + \mathbf{m}^{\rightarrow}_i + \mathbf{m}^{\leftarrow}_i + \mathbf{b})\big)

    where :math:`\mathcal{N}^{-}(i)` are the sources of edges into :math:`i`,
    :math:`\mathcal{N}^{+}(i)` the targets of edges out of it, and :math:`w` optional edge
    weights (1 when absent): a soft pooled edge passes a soft message and a gradient.
    The residual and LayerNorm keep deep stacks trainable. With ``residual=False`` the
    layer returns the branch :math:`\mathrm{GELU}(\cdots)` alone, for pre-LN blocks that
    add it to their own residual stream (:math:`\mathbf{h} + f(\mathrm{LN}(\mathbf{h}))`).

    References: separate weights along and against an edge's direction as in the
    syntactic GCN of Marcheggiani and Titov, "Encoding Sentences with Graph Convolutional
    Networks for Semantic Role Labeling" (EMNLP 2017), and the in- and out-neighbour
    aggregations of Dir-GNN, Rossi et al., "Edge Directionality Improves Learning on
    Heterophilic Graphs" (LoG 2023).

    Args:
        channels: input and output size.
        backward: also pass messages against edge direction (default ``True``).
        residual: add the input and normalise (default ``True``).
        **kwargs: :class:`~torch_geometric.nn.conv.MessagePassing` options.

    Shapes:
        - **input:** node features ``[N, channels]``, edge indices ``[2, E]``, edge
          weights ``[E]`` (optional)
        - **output:** node features ``[N, channels]``
    """

    def __init__(self, channels: int, backward: bool = True, residual: bool = True,
                 **kwargs) -> None:
        kwargs.setdefault("aggr", "mean")
        super().__init__(**kwargs)
        self.channels = channels
        self.backward = backward
        self.residual = residual
        self.lin_self = nn.Linear(channels, channels)
        self.lin_fwd = nn.Linear(channels, channels, bias=False)
        self.lin_bwd = nn.Linear(channels, channels, bias=False) if backward else None
        self.act = nn.GELU()
        self.norm = nn.LayerNorm(channels) if residual else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.lin_self.reset_parameters()
        self.lin_fwd.reset_parameters()
        if self.lin_bwd is not None:
            self.lin_bwd.reset_parameters()
        if self.norm is not None:
            self.norm.reset_parameters()

    def forward(self, x: Tensor, edge_index: Adj, edge_weight: OptTensor = None) -> Tensor:
        out = self.lin_self(x) + self.propagate(
            edge_index, x=self.lin_fwd(x), edge_weight=edge_weight
        )
        if self.lin_bwd is not None:
            out = out + self.propagate(
                edge_index.flip(0), x=self.lin_bwd(x), edge_weight=edge_weight
            )
        if self.norm is None:
            return self.act(out)
        return self.norm(x + self.act(out))

    def message(self, x_j: Tensor, edge_weight: OptTensor) -> Tensor:
        return x_j if edge_weight is None else edge_weight.view(-1, 1) * x_j

    def __repr__(self) -> str:
        extra = "" if self.residual else ", residual=False"
        return f"{self.__class__.__name__}({self.channels}, backward={self.backward}{extra})"
