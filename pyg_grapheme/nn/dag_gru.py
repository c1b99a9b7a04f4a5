"""DAGGRU: recurrent message passing over a DAG in topological order, both directions."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.utils import cumsum, degree, scatter, to_dense_batch


class DAGGRU(nn.Module):
    r"""Recurrent message passing over a DAG in topological order (a GRU per direction).

    Each node's state is a GRU step on its input and the mean state of its predecessors,
    computed in topological order (DAGNN, Thost and Chen 2021), and the same on the
    reversed DAG with separate weights; the output concatenates the two:

    .. math::
        \overrightarrow{\mathbf{h}}_v = \mathrm{GRU}\Big(\mathbf{x}_v,\;
            \frac{1}{|\mathcal{N}^{-}(v)|} \sum_{u \in \mathcal{N}^{-}(v)}
            \overrightarrow{\mathbf{h}}_u\Big), \qquad
        \overleftarrow{\mathbf{h}}_v = \mathrm{GRU}'\Big(\mathbf{x}_v,\;
            \frac{1}{|\mathcal{N}^{+}(v)|} \sum_{w \in \mathcal{N}^{+}(v)}
            \overleftarrow{\mathbf{h}}_w\Big), \qquad
        \mathbf{h}'_v = \overrightarrow{\mathbf{h}}_v \,\|\, \overleftarrow{\mathbf{h}}_v

    with a zero state where a node has no predecessor (successor), and
    :math:`\mathrm{GRU}` the cell of :class:`torch.nn.GRU`. One layer carries
    information along a whole path, which a message-passing layer does one hop at a
    time: on text in reading order it is a bidirectional GRU, the sequential bias that
    evaluating nested expressions or propagating a carry needs.

    Two paths, the same function: ``chains=True`` promises that each graph's nodes form
    one chain in node order (text graphs' reading order) and runs :class:`torch.nn.GRU`
    on the dense batch (the reversed direction on each graph's reversed nodes, no
    packing); otherwise the edges are followed level by level (longest-path depth from
    the sources), one batched cell step per level: ``O(depth)`` sequential steps, each
    reading the node and edge lists, ``O(depth (N + E))`` work (for long chains use
    ``chains=True``).
    Under :func:`torch.compile` the ``chains`` path's two GRU calls are graph breaks
    (dynamo does not trace torch's RNNs); they run eagerly.

    Reference: Thost and Chen, "Directed Acyclic Graph Neural Networks" (ICLR 2021); Cho
    et al., "Learning Phrase Representations using RNN Encoder-Decoder" (2014) for the cell.

    Args:
        in_channels: input size.
        out_channels: output size, even: each direction's state is ``out_channels // 2``.
        gate: if given, the output is multiplied by a learned per-channel gate that
            starts at this value (``0``: the layer starts closed, ReZero, Bachlechner et
            al. 2020; for adding it to a residual stream without drowning what is there).

    Shapes:
        - **input:** node features ``[N, in_channels]``, edges ``[2, E]`` (a DAG), the
          batch vector ``[N]`` (needed with ``chains=True``)
        - **output:** node features ``[N, out_channels]``
    """

    def __init__(self, in_channels: int, out_channels: int, gate: float | None = None) -> None:
        super().__init__()
        if out_channels % 2:
            raise ValueError(f"out_channels must be even (two directions), got {out_channels}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.fwd = nn.GRU(in_channels, out_channels // 2, batch_first=True)
        self.bwd = nn.GRU(in_channels, out_channels // 2, batch_first=True)
        self.gate_init = gate
        self.gate = None if gate is None else nn.Parameter(torch.empty(out_channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.fwd.reset_parameters()
        self.bwd.reset_parameters()
        if self.gate is not None:
            nn.init.constant_(self.gate, float(self.gate_init))  # type: ignore[arg-type]

    def forward(
        self,
        x: Tensor,
        edge_index: Tensor,
        batch: Tensor | None = None,
        *,
        chains: bool = False,
        batch_size: int | None = None,
        max_num_nodes: int | None = None,
    ) -> Tensor:
        """``batch_size`` and ``max_num_nodes`` (the number of graphs and the largest, as
        in :func:`~torch_geometric.utils.to_dense_batch`) spare a host sync on the
        ``chains`` path when the caller knows them."""
        if chains:
            if batch is None:
                batch = x.new_zeros(x.size(0), dtype=torch.long)
            out = self._chains(x, batch, batch_size, max_num_nodes)
        else:
            out = torch.cat([self._levels(self.fwd, x, edge_index),
                             self._levels(self.bwd, x, edge_index.flip(0))], dim=-1)
        return out if self.gate is None else out * self.gate

    def _chains(self, x: Tensor, batch: Tensor, batch_size: int | None,
                max_num_nodes: int | None) -> Tensor:
        n = x.size(0)
        if n == 0:
            return x.new_zeros(0, self.out_channels)
        sizes = degree(batch, batch_size, dtype=torch.long)
        ptr = cumsum(sizes)
        # Node i of graph g at position p reads node ptr[g] + size[g] - 1 - p backwards;
        # the map is its own inverse. Right padding does not reach a valid position of a
        # forward GRU, so neither direction needs packing.
        rev = 2 * ptr[batch] + sizes[batch] - 1 - torch.arange(n, device=x.device)
        out = []
        for gru, order in ((self.fwd, None), (self.bwd, rev)):
            xs = x if order is None else x[order]
            dense, mask = to_dense_batch(xs, batch, batch_size=batch_size,
                                         max_num_nodes=max_num_nodes)
            h = gru(dense)[0][mask]
            out.append(h if order is None else h[order])
        return torch.cat(out, dim=-1)

    @staticmethod
    def _levels(gru: nn.GRU, x: Tensor, edge_index: Tensor) -> Tensor:
        n = x.size(0)
        hidden = gru.hidden_size
        src, dst = edge_index
        depth = _depth(n, src, dst)
        # nn.GRU's own layer-0 weights: both paths compute the same function.
        w_ih, w_hh, b_ih, b_hh = (
            gru.get_parameter(name)
            for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"))
        gi = nn.functional.linear(x, w_ih, b_ih)
        h = x.new_zeros(n, hidden)
        num_levels = int(depth.max()) + 1 if n else 0
        for level in range(num_levels):
            nodes = (depth == level).nonzero().view(-1)
            into = (depth[dst] == level).nonzero().view(-1)
            # Every in-edge of a node at this level comes from a lower, finished level.
            prev = scatter(h[src[into]], dst[into], 0, dim_size=n, reduce="mean")[nodes]
            gh = nn.functional.linear(prev, w_hh, b_hh)
            r_i, z_i, n_i = gi[nodes].chunk(3, dim=-1)
            r_h, z_h, n_h = gh.chunk(3, dim=-1)
            r = torch.sigmoid(r_i + r_h)
            z = torch.sigmoid(z_i + z_h)
            cand = torch.tanh(n_i + r * n_h)
            h = h.index_copy(0, nodes, (1 - z) * cand + z * prev)
        return h

    def __repr__(self) -> str:
        gate = "" if self.gate_init is None else f", gate={self.gate_init}"
        return f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}{gate})"


def _depth(n: int, src: Tensor, dst: Tensor) -> Tensor:
    """Longest-path depth of every node from the DAG's sources (``ValueError`` on a cycle)."""
    depth = src.new_zeros(n)
    for _ in range(n + 1):
        new = depth.scatter_reduce(0, dst, depth[src] + 1, reduce="amax", include_self=True)
        if torch.equal(new, depth):
            return depth
        depth = new
    raise ValueError("DAGGRU needs a DAG: the edges contain a cycle")
