r"""Pre-LN residual blocks that put :class:`DAGConv` message passing on a transformer's
residual stream (:class:`GatedMessagePassing`, :class:`PreNormGraphBlock`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GPSConv
from torch_geometric.nn.conv import MessagePassing
from torch_geometric.typing import Adj
from torch_geometric.utils import cumsum, degree, scatter, to_dense_batch

from pyg_grapheme.nn.dag_conv import DAGConv
from pyg_grapheme.nn.relative_position import RelativePositionBias


class GatedMessagePassing(nn.Module):
    r"""A gated, pre-LN :class:`DAGConv` branch on a residual stream:

    .. math::
        \mathbf{h}_i \leftarrow \mathbf{h}_i + \mathbf{g} \odot
            \mathrm{DAGConv}\big(\mathrm{LN}(\mathbf{h})\big)_i

    with a learned per-channel gate :math:`\mathbf{g}` that starts at 0 (ReZero, Bachlechner
    et al., 2021): at initialisation the block is the identity, so the embedding's signal
    (which grapheme, where) is not swamped by a freshly initialised branch, and the
    network opens the gate as far as message passing helps. On the place-value task the
    gate from 0 did better than the same branch ungated or gated from 0.1
    (``experiments/arch_search.py``; the figures: docs/model.md).

    Args:
        channels: feature size.
        backward: also pass messages against edge direction (default ``True``).
        gate: the gate's initial value (default ``0``: closed).

    Shapes:
        - **input:** ``x`` ``[N, channels]``, ``edge_index`` ``[2, E]``, ``edge_weight``
          ``[E]`` (optional)
        - **output:** ``[N, channels]``
    """

    def __init__(self, channels: int, backward: bool = True, gate: float = 0.0) -> None:
        super().__init__()
        self.channels = channels
        self.gate_init = gate
        self.norm = nn.LayerNorm(channels)
        self.conv = DAGConv(channels, backward=backward, residual=False)
        self.gate = nn.Parameter(torch.empty(channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.norm.reset_parameters()
        self.conv.reset_parameters()
        nn.init.constant_(self.gate, self.gate_init)

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor | None = None
                ) -> Tensor:
        return x + self.gate * self.conv(self.norm(x), edge_index, edge_weight)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.channels}, backward={self.conv.backward})"


class PreNormGraphBlock(nn.Module):
    r"""A pre-LN graph transformer block (Xiong et al., 2020): gated local message passing,
    then multi-head self-attention over each graph's nodes, then a feed-forward layer,
    each a residual branch on normalised input:

    .. math::
        \mathbf{h} \leftarrow \mathbf{h} + \mathbf{g} \odot
            \mathrm{DAGConv}(\mathrm{LN}(\mathbf{h})),\quad
        \mathbf{h} \leftarrow \mathbf{h} + \mathrm{MHA}(\mathrm{LN}(\mathbf{h})),\quad
        \mathbf{h} \leftarrow \mathbf{h} + \mathrm{FF}(\mathrm{LN}(\mathbf{h}))

    The residual stream is never normalised (a stack ends with its own LayerNorm). On the
    place-value task it learnt faster per step than post-LN :class:`~torch_geometric.nn.
    conv.GPSConv` layers around the same :class:`DAGConv` (0.28-0.34 against 0.19
    validation exact match at 600 steps, ``experiments/arch_search.py``).

    Args:
        channels: feature size. heads: attention heads. ff_mult: feed-forward width,
        times ``channels``. dropout: in attention and feed-forward. gate: the message
        passing gate's initial value (:class:`GatedMessagePassing`). relative_buckets:
        ``> 0`` adds a :class:`~pyg_grapheme.nn.RelativePositionBias` with that many
        buckets to the attention logits (default ``0``: none), its table starting at
        ``relative_init`` (``"alibi"``, the default, or ``"zeros"``).

    Shapes:
        - **input:** ``x`` ``[N, channels]``, reading-order ``edge_index`` ``[2, E]``,
          ``batch`` ``[N]`` (nodes of a graph contiguous, PyG's layout)
        - **output:** ``[N, channels]``
    """

    def __init__(self, channels: int, heads: int, ff_mult: int = 2, dropout: float = 0.0,
                 gate: float = 0.0, relative_buckets: int = 0, relative_init: str = "alibi"):
        super().__init__()
        self.channels, self.heads = channels, heads
        self.local = GatedMessagePassing(channels, gate=gate)
        self.attn = nn.TransformerEncoderLayer(
            channels, heads, ff_mult * channels, dropout=dropout, activation="gelu",
            batch_first=True, norm_first=True,
        )
        self.relative = (RelativePositionBias(heads, relative_buckets, init=relative_init)
                         if relative_buckets else None)

    def reset_parameters(self) -> None:
        self.local.reset_parameters()
        reset_transformer_layer(self.attn)
        if self.relative is not None:
            self.relative.reset_parameters()

    def forward(self, x: Tensor, edge_index: Tensor, batch: Tensor, *,
                batch_size: int | None = None, max_num_nodes: int | None = None) -> Tensor:
        """``batch_size`` and ``max_num_nodes`` (graphs, nodes of the largest graph) size
        the dense attention batch; given, nothing here reads a size from the data (no
        host sync, no :func:`torch.compile` graph break)."""
        x = self.local(x, edge_index)
        if batch_size is None or max_num_nodes is None:
            dense, mask = to_dense_batch(x, batch)
            return self._attend(dense, mask)[mask]
        dense, mask = to_dense_batch(x, batch, batch_size=batch_size,
                                     max_num_nodes=max_num_nodes)
        return from_dense_batch(self._attend(dense, mask), batch, batch_size, max_num_nodes)

    def _attend(self, dense: Tensor, mask: Tensor) -> Tensor:
        if self.relative is None:
            return self.attn(dense, src_key_padding_mask=~mask)
        # the padding folded into the float mask (mixed mask types are deprecated)
        bias = self.relative(dense.size(1), dense.size(0), ~mask, dtype=dense.dtype)
        # The layer's own pre-LN blocks, as its training path runs them: its fused
        # inference path (eval, no grad) read this [B * heads, L, L] mask wrongly
        # (other outputs than in training mode, NaN once trained).
        layer = self.attn
        x = dense + layer._sa_block(layer.norm1(dense), bias, None)
        return x + layer._ff_block(layer.norm2(x))

    def __repr__(self) -> str:
        rel = "" if self.relative is None else f", relative_buckets={self.relative.num_buckets}"
        return f"{self.__class__.__name__}({self.channels}, heads={self.heads}{rel})"


def from_dense_batch(dense: Tensor, batch: Tensor, batch_size: int, max_num_nodes: int
                     ) -> Tensor:
    r"""The inverse of :func:`~torch_geometric.utils.to_dense_batch`: the rows of
    ``dense`` ``[batch_size, max_num_nodes, *]`` that hold nodes, ``[N, *]``, in node order.

    ``dense[mask]`` selects the same rows, but a boolean mask has a data-dependent
    number of rows (a :func:`torch.compile` graph break); here the node count is ``N``,
    a shape. Node ``i`` of graph ``g`` sits at row ``g * max_num_nodes + i - ptr[g]``
    (nodes of a graph contiguous, PyG's layout)."""
    sizes = scatter(torch.ones_like(batch), batch, 0, batch_size, reduce="sum")
    index = (batch * max_num_nodes + torch.arange(batch.numel(), device=batch.device)
             - cumsum(sizes).index_select(0, batch))
    return dense.reshape(batch_size * max_num_nodes, *dense.shape[2:]).index_select(0, index)


class SizedGPSConv(GPSConv):
    r""":class:`~torch_geometric.nn.conv.GPSConv` (Rampasek et al., *Recipe for a General,
    Powerful, Scalable Graph Transformer*, NeurIPS 2022) whose dense attention batch can
    take its sizes from the caller: with ``batch_size`` and ``max_num_nodes`` given, the
    layer reads no size from the data (PyG's forward calls
    :func:`~torch_geometric.utils.to_dense_batch` without them, two host syncs, and
    selects the nodes back with a boolean mask: three :func:`torch.compile` graph breaks
    a layer). The same parameters and the same result, bit for bit; without the sizes
    it is PyG's forward.

    ``relative_buckets > 0`` adds a :class:`~pyg_grapheme.nn.RelativePositionBias` with
    that many buckets to the attention logits (distances in each graph's node order;
    ``heads * relative_buckets`` parameters; ``relative_init="alibi"``, the default,
    starts at ALiBi's penalties; from ``"zeros"`` the layer computes PyG's function until
    training moves them, which measured too slow to matter, docs/model.md). It needs the
    sizes; without them it reads them.

    Shapes:
        - **input:** ``x`` ``[N, channels]``, ``edge_index`` ``[2, E]``, ``batch``
          ``[N]`` (nodes of a graph contiguous)
        - **output:** ``[N, channels]``
    """

    def __init__(self, channels: int, conv: MessagePassing | None, heads: int = 1, *,
                 relative_buckets: int = 0, relative_init: str = "alibi", **kwargs) -> None:
        super().__init__(channels, conv, heads=heads, **kwargs)
        if relative_buckets and self.attn_type != "multihead":
            raise ValueError(f"a relative position bias needs attn_type='multihead', "
                             f"got {self.attn_type!r}")
        self.relative = (RelativePositionBias(heads, relative_buckets, init=relative_init)
                         if relative_buckets else None)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.relative is not None:
            self.relative.reset_parameters()

    def __repr__(self) -> str:
        text = super().__repr__()
        if self.relative is None:
            return text
        return f"{text[:-1]}, relative_buckets={self.relative.num_buckets})"

    def forward(  # adds keyword-only sizes to GPSConv.forward
        self, x: Tensor, edge_index: Adj, batch: Tensor | None = None, *,
        batch_size: int | None = None, max_num_nodes: int | None = None, **kwargs,
    ) -> Tensor:
        if self.relative is not None and (batch_size is None or max_num_nodes is None):
            if batch is None:
                batch = x.new_zeros(x.size(0), dtype=torch.long)
            sizes = degree(batch, dtype=torch.long)  # the sizes the bias needs (a host sync)
            batch_size, max_num_nodes = sizes.numel(), int(sizes.max()) if x.size(0) else 0
        if (batch is None or batch_size is None or max_num_nodes is None
                or not isinstance(self.attn, nn.MultiheadAttention)):
            return super().forward(x, edge_index, batch, **kwargs)
        # GPSConv.forward (PyG 2.8) with the sizes passed on; keep the two in step.
        hs = []
        if self.conv is not None:  # local message passing
            h = self.conv(x, edge_index, **kwargs)
            h = F.dropout(h, p=self.dropout, training=self.training)
            h = h + x
            if self.norm1 is not None:
                h = self.norm1(h, batch=batch) if self.norm_with_batch else self.norm1(h)
            hs.append(h)
        h, mask = to_dense_batch(x, batch, batch_size=batch_size, max_num_nodes=max_num_nodes)
        if self.relative is None:
            h, _ = self.attn(h, h, h, key_padding_mask=~mask, need_weights=False)
        else:  # the padding folded into the float mask (mixed mask types are deprecated)
            bias = self.relative(max_num_nodes, batch_size, ~mask, dtype=h.dtype)
            h, _ = self.attn(h, h, h, attn_mask=bias, need_weights=False)
        h = from_dense_batch(h, batch, batch_size, max_num_nodes)
        h = F.dropout(h, p=self.dropout, training=self.training)
        h = h + x
        if self.norm2 is not None:
            h = self.norm2(h, batch=batch) if self.norm_with_batch else self.norm2(h)
        hs.append(h)
        out = sum(hs)
        out = out + self.mlp(out)
        if self.norm3 is not None:
            out = self.norm3(out, batch=batch) if self.norm_with_batch else self.norm3(out)
        return out


def gps_layer(channels: int, heads: int, dropout: float = 0.0, relative_buckets: int = 0,
              relative_init: str = "alibi") -> GPSConv:
    """PyG's :class:`~torch_geometric.nn.conv.GPSConv` around a :class:`DAGConv`: local
    reading-order messages in parallel with self-attention over each graph (post-LN);
    a :class:`SizedGPSConv`, so callers that know the sizes can pass them, with a
    relative position bias when ``relative_buckets > 0``."""
    return SizedGPSConv(channels, DAGConv(channels), heads=heads, dropout=dropout,
                        act="gelu", norm="layer_norm", norm_kwargs={"mode": "node"},
                        relative_buckets=relative_buckets, relative_init=relative_init)


def reading_order(batch) -> tuple[Tensor, int, Tensor]:
    """``(batch vector [N], number of graphs, reading-order edges [2, E])`` of a batch of
    text graphs; a single graph without ``batch`` is graph 0, and with a 1-dim
    ``edge_attr`` only the edges marked 1 (reading order) are kept."""
    x = batch.x
    vec = getattr(batch, "batch", None)
    if vec is None:
        vec = torch.zeros(x.size(0), dtype=torch.long, device=x.device)
    num_graphs = int(getattr(batch, "num_graphs", 1) or 1)
    chain = batch.edge_index
    if getattr(batch, "edge_attr", None) is not None and batch.edge_attr.dim() == 1:
        chain = chain[:, batch.edge_attr == 1]
    return vec, num_graphs, chain


def reset_transformer_layer(layer: nn.Module) -> None:
    """Re-initialise a ``torch.nn.Transformer{Encoder,Decoder}Layer`` as its constructor did."""
    for sub in layer.modules():
        if sub is not layer and hasattr(sub, "reset_parameters"):
            sub.reset_parameters()  # type: ignore[operator]  # Module.__getattr__: Tensor | Module
    for attn in (getattr(layer, "self_attn", None), getattr(layer, "multihead_attn", None)):
        if attn is not None:
            attn._reset_parameters()
