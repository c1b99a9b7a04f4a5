"""GraphTransformNet: text graph in, answer graph out (byte distributions per node)."""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Batch
from torch_geometric.nn import GATv2Conv
from torch_geometric.nn.aggr import AttentionalAggregation
from torch_geometric.utils import scatter

from pyg_grapheme.data.graphemes import text_to_graph
from pyg_grapheme.nn.dag_conv import DAGConv
from pyg_grapheme.nn.encoder import ChainPosition, GraphemeEncoder
from pyg_grapheme.nn.head import ByteHead, decode_slots
from pyg_grapheme.nn.merge_pool import ThresholdMergePool


def reading_order_edges(batch: Tensor, distances: Sequence[int]) -> Tensor:
    """Edges ``i -> i + d`` and ``i + d -> i`` inside each graph, for every ``d``.

    Assumes each graph's nodes are stored contiguously in reading order (what
    :func:`~pyg_grapheme.text_to_graph` and PyG batching give). ``O(N * len(distances))``.
    """
    n = batch.numel()
    parts = []
    for d in distances:
        src = torch.arange(max(n - d, 0), device=batch.device)
        keep = batch[src] == batch[src + d] if n > d else src.bool()
        src = src[keep]
        parts += [torch.stack([src, src + d]), torch.stack([src + d, src])]
    if not parts:
        return torch.zeros(2, 0, dtype=torch.long, device=batch.device)
    return torch.cat(parts, dim=1)


def bipartite_complete(
    src_batch: Tensor, dst_batch: Tensor, num_graphs: int | None = None
) -> Tensor:
    """Edges from every source node to every target node of the same graph, ``[2, E]``
    with ``E = sum_g n_g m_g`` (source ids index ``src_batch``, target ids ``dst_batch``).

    Both batch vectors must be sorted (PyG's layout). Built without a Python loop; pass
    ``num_graphs`` to skip reading it off the device.
    """
    device = src_batch.device
    if num_graphs is None:
        num_graphs = int(max(src_batch.max().item() if src_batch.numel() else -1,
                             dst_batch.max().item() if dst_batch.numel() else -1)) + 1
    n_src = torch.bincount(src_batch, minlength=num_graphs)
    start = n_src.cumsum(0) - n_src
    rep = n_src[dst_batch]  # each target node meets every source node of its graph
    dst = torch.arange(dst_batch.numel(), device=device).repeat_interleave(rep)
    block = rep.cumsum(0) - rep
    offset = torch.arange(dst.numel(), device=device) - block.repeat_interleave(rep)
    src = start[dst_batch].repeat_interleave(rep) + offset
    return torch.stack([src, dst])


class GraphTransformNet(nn.Module):
    r"""Turn a batch of text graphs into a batch of answer graphs.

    .. code-block:: text

        bytes ─▶ GraphemeEncoder ─▶ DAGConv × L₁ ─▶ [GATv2Conv + global context] × L₂
              ─▶ ThresholdMergePool (along reading-order edges)
              ─▶ [GATv2Conv input ─▶ pooled (cross attention) + DAGConv] × L₃ ─▶ ByteHead

    - :class:`DAGConv` layers read the chain in both directions with separate weights.
    - :class:`~torch_geometric.nn.conv.GATv2Conv` layers attend over reading-order
      neighbours at distances ``attention_distances`` (both directions), and each layer adds
      an attention-pooled summary of the whole graph (a virtual node), so every node sees
      the whole question in one layer at ``O(N)`` cost. GATv2 rather than GAT: its dynamic
      attention (Brody et al., 2022) can rank neighbours differently per query node, which
      static GAT attention cannot.
    - :class:`ThresholdMergePool` merges nodes along reading-order edges only, so every
      cluster is a contiguous segment and the pooled graph is again a chain (a DAG): the
      answer's graphemes in order. Its expected-count gradients (``node_weight``,
      ``edge_weight``) tell the loss how many output nodes to make.
    - On the pooled chain, each layer first lets every output node attend over all input
      nodes of its graph (a bipartite :class:`~torch_geometric.nn.conv.GATv2Conv`,
      ``O(sum_g n_g m_g)``): the pooled segment says where an output grapheme sits, the
      attention fetches what it should say (the role attention plays in a seq2seq
      decoder), then a :class:`DAGConv` passes it along the output chain.
    - :class:`ByteHead` predicts each output node's bytes, vocabulary-free.

    Args:
        hidden: feature size (default ``128``).
        dag_layers: DAGConv layers before attention (default ``2``).
        gat_layers: GATv2Conv layers (default ``2``).
        heads: attention heads (``hidden`` must be divisible by it; default ``4``).
        post_layers: cross-attention + DAGConv layers on the pooled graph (default ``1``).
        attention_distances: reading-order distances the attention sees
            (default ``(1, 2, 4, 8, 16)``).
        pool_similarity, pool_tau, pool_threshold, pool_proj_channels:
            :class:`ThresholdMergePool` options (initial threshold ``sigmoid(theta)``;
            defaults ``"half_cosine"``, ``1.0``, ``0.5``, ``32``: scores on a learned
            32-dim projection, so what decides a cut need not be what the head reads).
        dropout: dropout in the attention layers (default ``0``).

    Shapes:
        - **input:** a :class:`~torch_geometric.data.Batch` of text graphs (``x`` uint8
          ``[N, 8]``, ``edge_index`` ``[2, E]``, ``batch`` ``[N]``)
        - **output:** a ``Batch`` with ``x`` ``[N', 8, 256]`` byte distributions,
          ``logits`` (same shape), ``edge_index``, ``edge_weight`` ``[E']``,
          ``node_weight`` ``[N']``, ``batch`` ``[N']``, and the pooling decisions
          ``cluster`` ``[N]``, ``merge_prob`` / ``merged`` / ``log_prob`` (per reading-order
          input edge).
    """

    def __init__(
        self,
        hidden: int = 128,
        dag_layers: int = 2,
        gat_layers: int = 2,
        heads: int = 4,
        post_layers: int = 1,
        attention_distances: Sequence[int] = (1, 2, 4, 8, 16),
        pool_similarity: str = "half_cosine",
        pool_tau: float = 1.0,
        pool_threshold: float = 0.5,
        pool_proj_channels: int | None = 32,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
        self.hidden = hidden
        self.attention_distances = tuple(attention_distances)
        self.encoder = GraphemeEncoder(hidden)
        self.dag = nn.ModuleList(DAGConv(hidden) for _ in range(dag_layers))
        self.gat = nn.ModuleList(
            GATv2Conv(hidden, hidden // heads, heads=heads, dropout=dropout)
            for _ in range(gat_layers)
        )
        self.context = nn.ModuleList(
            AttentionalAggregation(nn.Linear(hidden, 1), nn.Linear(hidden, hidden))
            for _ in range(gat_layers)
        )
        self.gat_norm = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(gat_layers))
        self.pool = ThresholdMergePool(
            hidden, reduce="mean", threshold=pool_threshold, similarity=pool_similarity,
            tau=pool_tau, proj_channels=pool_proj_channels,
        )
        self.pooled_context = AttentionalAggregation(
            nn.Linear(hidden, 1), nn.Linear(hidden, hidden)
        )
        self.pooled_pos = ChainPosition(hidden)
        self.pooled_norm = nn.LayerNorm(hidden)
        self.cross = nn.ModuleList(
            GATv2Conv((hidden, hidden), hidden // heads, heads=heads, dropout=dropout,
                      add_self_loops=False)
            for _ in range(post_layers)
        )
        self.cross_norm = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(post_layers))
        self.post = nn.ModuleList(DAGConv(hidden) for _ in range(post_layers))
        self.head = ByteHead(hidden)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in (self.encoder, *self.dag, *self.gat, *self.cross, *self.cross_norm,
                       *self.post, self.pool, self.head):
            module.reset_parameters()
        for ctx, norm in zip(self.context, self.gat_norm, strict=True):
            ctx.reset_parameters()
            norm.reset_parameters()
        self.pooled_context.reset_parameters()
        self.pooled_pos.reset_parameters()
        self.pooled_norm.reset_parameters()

    @property
    def theta(self) -> Tensor:
        """The merge threshold's logit (``sigmoid(theta)`` is the similarity threshold)."""
        return self.pool.theta

    def forward(self, batch: Batch, num_out: Tensor | None = None) -> Batch:
        """Answer graphs for a batch of text graphs.

        ``num_out`` (``[B]``, optional) forces each answer to that many nodes (the target
        grapheme counts in training: teacher forcing for the segmentation, see
        :func:`~pyg_grapheme.nn.merge_pool.forced_merges`); the model still picks where
        the boundaries go, and ``log_prob`` of the output says how likely its threshold
        finds them. Without it the threshold decides.
        """
        x = batch.x
        n = x.size(0)
        vec = getattr(batch, "batch", None)
        if vec is None:
            vec = torch.zeros(n, dtype=torch.long, device=x.device)
        num_graphs = int(getattr(batch, "num_graphs", 1) or 1)
        chain = batch.edge_index
        if getattr(batch, "edge_attr", None) is not None and batch.edge_attr.dim() == 1:
            chain = chain[:, batch.edge_attr == 1]  # merge along reading order only

        h = self.encoder(x, vec)
        for conv in self.dag:
            h = conv(h, chain)
        att = reading_order_edges(vec, self.attention_distances)
        for conv, ctx, norm in zip(self.gat, self.context, self.gat_norm, strict=True):
            summary = ctx(h, vec, dim_size=num_graphs)[vec]
            h = norm(h + F.gelu(conv(h, att)) + summary)

        # Score merges on features centred per graph: what all nodes of a question share
        # (its context) would otherwise make every pair look alike and merge everything.
        mean = scatter(h, vec, dim=0, dim_size=num_graphs, reduce="mean")
        out = self.pool(h - mean[vec], chain, vec, num_clusters=num_out)
        hp = out.x + mean[out.batch]  # the mean is linear: this is the pooled h itself
        # Re-encode position on the pooled chain (which output grapheme this is, of how
        # many) and the question's summary: what the head needs to say *which* grapheme.
        summary = self.pooled_context(h, vec, dim_size=num_graphs)[out.batch]
        hp = self.pooled_norm(hp + summary + self.pooled_pos(out.batch, out.x.size(0)))
        cross = bipartite_complete(vec, out.batch, num_graphs)
        for att_conv, norm, conv in zip(self.cross, self.cross_norm, self.post, strict=True):
            hp = norm(hp + F.gelu(att_conv((h, hp), cross)))
            hp = conv(hp, out.edge_index, out.edge_weight)
        logits = self.head(hp)
        counts = torch.bincount(out.batch, minlength=num_graphs)
        pred = Batch(
            x=logits.softmax(dim=-1),
            logits=logits,
            edge_index=out.edge_index,
            edge_weight=out.edge_weight,
            node_weight=out.node_weight,
            batch=out.batch,
            ptr=torch.cat([counts.new_zeros(1), counts.cumsum(0)]),
            cluster=out.cluster,
            merge_prob=out.merge_prob,
            merged=out.merged,
            log_prob=out.log_prob,
        )
        pred._num_graphs = num_graphs
        return pred

    @torch.no_grad()
    def generate(self, texts: str | Sequence[str]) -> str | list[str]:
        """Answer each text: run the model and decode its output graph to a string."""
        single = isinstance(texts, str)
        items = [texts] if single else list(texts)
        was_training = self.training
        self.eval()
        try:
            device = next(self.parameters()).device
            batch = Batch.from_data_list([text_to_graph(t) for t in items]).to(device)
            answers = decode_graphs(self(batch))
        finally:
            self.train(was_training)
        return answers[0] if single else answers


def topological_order(num_nodes: int, edge_index: Tensor) -> list[int]:
    """Kahn's algorithm, ties broken by node id (the pooled node ids follow each cluster's
    first input position, so a chain reads in chain order). Nodes on a cycle, which a
    pooled graph can only have if clusters are not contiguous, follow in id order."""
    src, dst = edge_index.tolist() if edge_index.numel() else ([], [])
    indeg = [0] * num_nodes
    succ: list[list[int]] = [[] for _ in range(num_nodes)]
    for s, d in zip(src, dst, strict=True):
        if s != d:
            succ[s].append(d)
            indeg[d] += 1
    heap = [i for i in range(num_nodes) if indeg[i] == 0]
    heapq.heapify(heap)
    order, seen = [], [False] * num_nodes
    while heap:
        i = heapq.heappop(heap)
        order.append(i)
        seen[i] = True
        for j in succ[i]:
            indeg[j] -= 1
            if indeg[j] == 0:
                heapq.heappush(heap, j)
    return order + [i for i in range(num_nodes) if not seen[i]]


def decode_graphs(pred: Batch) -> list[str]:
    """Decode each predicted graph: nodes in topological order, each node's most likely
    byte per slot, UTF-8 with U+FFFD for invalid bytes (never an exception)."""
    classes = pred.x.argmax(dim=-1).cpu()
    order = torch.tensor(
        topological_order(classes.size(0), pred.edge_index.cpu()), dtype=torch.long
    )
    vec = pred.batch.cpu()[order] if order.numel() else pred.batch.cpu()
    texts = []
    for g in range(int(pred.num_graphs)):
        nodes = order[vec == g]
        texts.append(decode_slots(classes[nodes]).decode("utf-8", errors="replace"))
    return texts
