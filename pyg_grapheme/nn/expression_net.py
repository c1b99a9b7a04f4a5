"""ExpressionNet: question text in, expression graph out (tokens by pooling, edges by EdgeHead)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.data import Batch
from torch_geometric.utils import cumsum, degree

from pyg_grapheme.nn.blocks import gps_layer
from pyg_grapheme.nn.edge_head import EdgeHead, all_pairs
from pyg_grapheme.nn.encoder import GraphemeEncoder, node_positions
from pyg_grapheme.nn.head import ByteHead
from pyg_grapheme.nn.pool import Partition, Selection, ThresholdMergePool
from pyg_grapheme.nn.transform_net import _check_length, _output_batch, _read_sizes

__all__ = ["ExpressionNet", "hard_graphs"]


class ExpressionNet(nn.Module):
    r"""Turn question text graphs into graph-shaped answers (expression trees).

    .. code-block:: text

        bytes ─▶ GraphemeEncoder ─▶ GPSConv(DAGConv + attention) × L_enc   (reading chain)
              ─▶ ThresholdMergePool along the reading chain ─▶ candidate tokens
              ─▶ GPSConv × L_tok over the pooled chain
              ─▶ keep gate σ(w·h)  (node mass)    ByteHead (label)    EdgeHead (edges)

    **Tokens.** The pool merges neighbours of the reading chain (``1``, ``6`` -> ``16``);
    every pooled node also gets a *keep* probability :math:`k_c`, its mass in the
    structural loss (times the pool's count-gradient mass). Parentheses and spaces are
    not deleted from the input (``16`` and ``1 6`` must stay apart): they become pooled
    nodes of their own or part of a token's cluster, and the keep gate drops what
    matches no target node (a node of mass 0.1 is 0.9 deleted, see
    :mod:`pyg_grapheme.loss.structural`). At inference a node exists when
    :math:`k_c > 0.5`.

    **Edges.** :class:`EdgeHead` scores every ordered pair of pooled nodes of the same
    question (:math:`O(m^2)` for :math:`m` pooled nodes), with the signed distance of the
    clusters' first graphemes as relative position. Nothing imposes an order on the
    output: the loss compares graphs up to node matching.

    Args:
        hidden: feature size (default ``64``).
        heads: attention heads (default ``4``).
        encoder_layers: GPSConv layers over the question (default ``2``).
        token_layers: GPSConv layers over the pooled tokens (default ``1``).
        pool_threshold, pool_tau, pool_proj_channels: :class:`ThresholdMergePool`
            options (defaults ``0.9``, ``1.0``, ``32``; at 0.5 the untrained
            encoder's neighbours are similar enough that every question pooled to one node).
        edge_hidden: :class:`EdgeHead` hidden size (default ``hidden``).
        max_distance: :class:`EdgeHead` relative-position clip (default ``16``).
        keep_bias: initial logit of the keep gate (default ``0``: every node half kept).
        edge_bias: initial logit of every edge (:class:`EdgeHead`'s ``bias_init``).
        span_features: give the edge head, for each pair, the sum of the encoder's
            features over the question text between the two tokens (signed; a span
            representation as in span-based parsers, Stern et al. 2017). Without it the
            level-2 edge term stalled with the root linked to every node (a child at one
            place is a grandchild at the same place in the other shape; docs/expression.md).
            Default ``True``.
        edge_natural_gradient: :class:`EdgeHead`'s ``natural_gradient`` (default
            ``False``).
        dropout: attention dropout (default ``0``).

    Shapes:
        - **input:** a ``Batch`` of text graphs (``x`` uint8 ``[N, 8]``, ``edge_index``,
          ``batch``)
        - **output:** a ``Batch`` with ``x`` ``[C, 8, 256]`` byte distributions,
          ``logits`` (their logs), ``node_weight`` ``[C]`` (keep times pool mass),
          ``keep`` ``[C]``, ``edge_index`` ``[2, P]`` (all ordered pairs per graph),
          ``edge_weight`` / ``edge_logit`` ``[P]``, ``batch`` ``[C]``, ``cluster`` ``[N]``,
          ``merged`` / ``merge_prob`` ``[E]`` (per chain edge), ``pos`` ``[C]``.
    """

    def __init__(
        self,
        hidden: int = 64,
        heads: int = 4,
        encoder_layers: int = 2,
        token_layers: int = 1,
        pool_threshold: float = 0.9,
        pool_tau: float = 1.0,
        pool_proj_channels: int | None = 32,
        edge_hidden: int | None = None,
        max_distance: int = 16,
        keep_bias: float = 0.0,
        edge_bias: float = 0.0,
        span_features: bool = True,
        edge_natural_gradient: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
        self.hidden = hidden
        self.keep_bias = keep_bias
        self.encoder = GraphemeEncoder(hidden)
        self.enc = nn.ModuleList(gps_layer(hidden, heads, dropout) for _ in range(encoder_layers))
        self.pool = ThresholdMergePool(
            hidden, aggr="mean", threshold=pool_threshold, similarity="half_cosine",
            tau=pool_tau, proj_channels=pool_proj_channels,
        )
        self.tok = nn.ModuleList(gps_layer(hidden, heads, dropout) for _ in range(token_layers))
        self.keep = nn.Linear(hidden, 1)
        self.head = ByteHead(hidden)
        self.span_features = span_features
        self.edge_head = EdgeHead(hidden, edge_hidden, max_distance=max_distance,
                                  bias_init=edge_bias, edge_dim=hidden if span_features else None,
                                  natural_gradient=edge_natural_gradient)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in (self.encoder, *self.enc, self.pool, *self.tok, self.keep, self.head,
                       self.edge_head):
            module.reset_parameters()
        with torch.no_grad():
            self.keep.bias.fill_(self.keep_bias)

    @torch.compiler.disable(recursive=False)
    def forward(self, batch: Batch) -> Batch:
        """Expression graphs for a batch of text graphs.

        Under :func:`torch.compile` this frame stays eager (``recursive=False``: what it
        calls is compiled), as :meth:`GraphTransformNet.forward
        <pyg_grapheme.nn.GraphTransformNet.forward>` is: it reads the batch's sizes and
        its longest question (a host sync), calls :meth:`tensor_forward`, the compiled
        frame, with plain tensors and ints, and builds the output ``Batch`` from its
        fields, each outside :mod:`torch._dynamo`."""
        x, chain, vec, num_graphs, _, ptr, longest = _read_sizes(batch)
        _check_length(self.encoder, longest)
        fields = self.tensor_forward(x, chain, vec, ptr, num_graphs, longest)
        # The node mass, keep times the pool's, is taken here, in eager: inside the
        # compiled graph inductor dropped the pool's count gradient through this product
        # (theta's gradient 0; aot_eager kept it; tests/nn/test_compile_expression_net.py).
        fields["node_weight"] = fields["keep"] * fields.pop("pool_weight")
        return _output_batch(num_graphs, fields)

    def tensor_forward(
        self,
        x: Tensor,
        chain: Tensor,
        vec: Tensor,
        ptr: Tensor,
        num_graphs: int,
        longest: int,
    ) -> dict[str, Tensor]:
        """:meth:`forward` on tensors: the questions' bytes ``x`` ``[N, 8]``, reading-order
        edges ``chain``, batch vector ``vec`` ``[N]``, the graphs' pointers ``ptr``
        ``[B + 1]``, ``B = num_graphs``, and the most nodes in a graph, ``longest``, to
        which the dense attention pads. Returns the output ``Batch``'s fields, with the
        pool's node masses as ``pool_weight`` (:meth:`forward` multiplies them by
        ``keep``). The only graph break under :func:`torch.compile` is
        :func:`_connect_tokens` (the pool's connected components and what their count
        sizes: the token pairs and the longest pooled question), called from this frame:
        called as a nested module, the pool's break split every frame of the stack."""
        n = x.size(0)
        h = self.encoder(x, vec, ptr)
        for conv in self.enc:
            h = conv(h, chain, vec, batch_size=num_graphs, max_num_nodes=longest)
        sel = self.pool.select(h, chain, vec)
        part, pairs, longest_tokens = _connect_tokens(self.pool, sel, num_graphs)
        out = self.pool.coarsen(h, sel, part)
        t, tvec = out.x, out.batch
        for conv in self.tok:
            t = conv(t, out.edge_index, tvec, batch_size=num_graphs,
                     max_num_nodes=longest_tokens)
        # A token's position: its first grapheme's place in the question.
        pos = torch.full((t.size(0),), n, dtype=torch.long, device=x.device)
        pos = pos.scatter_reduce(0, out.cluster, node_positions(n, vec, ptr), reduce="amin")
        keep = torch.sigmoid(self.keep(t).view(-1))
        logits = self.head(t).log_softmax(dim=-1)
        span = None
        if self.span_features:
            # prefix[g, p] = sum of h over the graphemes of question g before position p
            starts = torch.cumsum(h, 0) - h  # exclusive running sum over the batch
            at = ptr[tvec] + pos  # the token's first grapheme, global index
            span = starts[at[pairs[1]]] - starts[at[pairs[0]]]
        edges = self.edge_head(t, tvec, pos, pairs, span)
        counts = degree(tvec, num_graphs, dtype=torch.long)
        return dict(
            x=logits.exp(),
            logits=logits,
            pool_weight=out.node_weight,
            keep=keep,
            edge_index=edges.edge_index,
            edge_weight=edges.edge_weight,
            edge_logit=edges.logit,
            batch=tvec,
            ptr=cumsum(counts),
            pos=pos,
            cluster=out.cluster,
            merged=out.merged,
            merge_prob=out.merge_prob,
        )


@torch.compiler.disable
def _connect_tokens(
    pool: ThresholdMergePool, sel: Selection, num_graphs: int
) -> tuple[Partition, Tensor, int]:
    """The pool's connect step (:meth:`ThresholdMergePool.connect`) and the two things
    its data-dependent cluster count sizes: every ordered pair of tokens of a question
    (:func:`all_pairs`) and the most tokens in a question (the token layers' attention
    pads to it), in the one region hidden from :mod:`torch._dynamo` (one graph break)."""
    part = pool.connect(sel)
    tvec = part.quotient.batch
    longest = int(degree(tvec, num_graphs).max()) if tvec.numel() else 0
    return part, all_pairs(tvec, num_graphs), longest


@torch.no_grad()
def hard_graphs(pred: Batch, threshold: float = 0.5) -> list[tuple[Tensor, Tensor]]:
    """Each predicted graph at inference: ``(classes, edge_index)`` with the nodes whose
    keep probability exceeds ``threshold`` (their argmax byte classes ``[n, 8]``, in
    reading order) and the edges between them whose weight exceeds ``threshold``
    (``[2, e]``, renumbered ``0..n-1``)."""
    classes = pred.x.argmax(-1).cpu()
    alive = (pred.keep > threshold).cpu()
    batch = pred.batch.cpu()
    ei = pred.edge_index.cpu()
    on = (pred.edge_weight > threshold).cpu() & alive[ei[0]] & alive[ei[1]]
    ei = ei[:, on]
    new = torch.cumsum(alive.long(), 0) - 1  # index among the kept nodes
    ebatch = batch[ei[0]]
    out = []
    for g in range(int(pred.num_graphs)):
        nodes = (batch == g) & alive
        first = int(alive[batch < g].sum())
        e = new[ei[:, ebatch == g]] - first
        out.append((classes[nodes], e))
    return out
