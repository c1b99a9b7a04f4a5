"""GraphTransformNet: text graph in, answer graph out (byte distributions per node)."""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch_geometric.data import Batch
from torch_geometric.utils import cumsum, degree, to_dense_batch

from pyg_grapheme.data.graphemes import text_to_graph
from pyg_grapheme.nn.blocks import (
    GatedMessagePassing,
    PreNormGraphBlock,
    gps_layer,
    reading_order,
    reset_transformer_layer,
)
from pyg_grapheme.nn.dag_conv import DAGConv
from pyg_grapheme.nn.dag_gru import DAGGRU
from pyg_grapheme.nn.encoder import GraphemeEncoder
from pyg_grapheme.nn.head import ByteHead, decode_slots
from pyg_grapheme.nn.pool import ThresholdMergePool
from pyg_grapheme.nn.relative_position import RelativePositionBias


class GraphTransformNet(nn.Module):
    r"""Turn a batch of text graphs into a batch of answer graphs.

    .. code-block:: text

        bytes ─▶ GraphemeEncoder ─▶ GPSConv(DAGConv ∥ self-attention + relative bias) × L_enc
              ─▶ canvas: a chain of ``max_answer_length`` slots per question
              ─▶ [DAGConv along the canvas + self-attention + cross-attention] × L_dec
              ─▶ ByteHead (a byte distribution per canvas node)
              ─▶ ThresholdMergePool along the canvas chain ─▶ answer chain

    - **Encoder.** :class:`~torch_geometric.nn.conv.GPSConv` layers (Rampasek et al.,
      2022): a local :class:`DAGConv` over the reading-order edges (direction-aware) in
      parallel with multi-head self-attention over every node of the same question,
      so one layer relates any two graphemes (a place in a number to the word that
      names it) at ``O(sum_g n_g^2)``; the attention logits get a learned bias per
      head and reading-order distance (:class:`~pyg_grapheme.nn.RelativePositionBias`,
      T5's, starting at ALiBi's penalties), on top of the encoder's learned absolute
      positions.
      ``block="pre_ln"`` uses pre-LN graph blocks instead
      (:class:`~pyg_grapheme.nn.PreNormGraphBlock`: a gated DAGConv branch,
      self-attention and feed-forward on an unnormalised residual stream; the decoder's
      DAGConv gated too). Measured (docs/model.md): better on the place-value task,
      worse on the math curriculum; neither form wins both.
    - **Canvas.** The answer is not bounded by the question's length: every question
      gets a chain of :math:`T` = ``max_answer_length`` canvas nodes: a learned slot
      embedding plus a uniform copy of the question (the input of non-autoregressive
      decoders, Gu et al. 2018), in reading order and anchored at the speaking end
      (:func:`copy_sources`). Decoder layers pass
      messages along the canvas (:class:`DAGConv`), attend over the canvas and over the
      question (pre-LN :class:`torch.nn.TransformerDecoderLayer` without a causal mask).
      Its cost per question is fixed by :math:`T`, not by the question's length.
    - **Pooling.** :class:`ThresholdMergePool` merges canvas neighbours whose learned
      projections are more similar than its threshold: the contiguous segments are the
      answer's graphemes, the pooled graph is a chain, and each pooled node speaks with
      the byte distributions of its last canvas node (its first with
      ``canvas_align="left"``). The merge logits
      (``merge_logit``) and the canvas distributions (``canvas_log_probs``) are what
      :func:`~pyg_grapheme.loss.segmentation_nll` needs to sum over every segmentation.

    Args:
        hidden: feature size (default ``128``).
        heads: attention heads (``hidden`` must be divisible by it; default ``4``).
        encoder_layers: GPSConv layers over the question (default ``2``).
        decoder_layers: canvas layers (default ``2``).
        max_answer_length: canvas nodes per question: the answer has at most this many
            graphemes (default ``32``).
        ff_mult: feed-forward width of the attention layers, times ``hidden`` (default ``2``).
        pool_threshold, pool_tau, pool_proj_channels: :class:`ThresholdMergePool`
            options (initial threshold, temperature, scoring projection; defaults
            ``0.5``, ``0.5``, ``32``). The temperature scales the merge logits in the
            likelihood only, ``sigmoid(z / tau)`` (the thresholded decisions ignore it);
            ``0.5`` learnt kindergarten and math2 faster than ``1`` (docs/model.md).
        dropout: dropout in the attention layers (default ``0``).
        max_input_length: longest question (in graphemes) :meth:`forward` accepts;
            memory grows as its square (default ``4096``).
        block: ``"gps"`` (default) or ``"pre_ln"``, the layers' form (see above).
        message_gate: initial value of the pre-LN blocks' message-passing gates
            (default ``0``; :class:`~pyg_grapheme.nn.GatedMessagePassing`).
        run_positions: learned positions of each grapheme inside its run of one
            Unicode category (a digit's place value; :class:`GraphemeEncoder`; default
            ``32``; ``0``: none).
        canvas_scale: the normalised canvas enters the decoder's residual stream times
            this (default ``0.02``, the scale of a pre-LN Transformer's token
            embeddings: the stream is at first what the decoder reads from the question
            through cross-attention, not the copied question node; docs/model.md).
            Checkpoints written before these defaults (and ``pool_tau``'s) load with the
            values they were trained with (``0``, ``1`` and ``1``;
            ``GraphemeModule.network_defaults_before``).
        head_factorized: a :class:`ByteHead` with one output layer shared by the byte
            slots (``factorized=True``: ~36k instead of ~264k parameters at hidden 128,
            free for depth; default ``False``; docs/model.md).
        encoder_gru: a :class:`~pyg_grapheme.nn.DAGGRU` along each question's reading
            order, added to the grapheme embeddings before the encoder layers: one layer
            that carries information along the whole question, the sequential bias of a
            GRU (default ``False``; docs/model.md).
        decoder_gru: the same along the canvas, added to its stream after the decoder
            layers (default ``False``; docs/model.md). Both start closed (a per-channel
            gate from 0); under :func:`torch.compile` each GRU call is a graph break
            (dynamo does not trace torch's RNNs).
        decoder_repeats: run the decoder layers this many times with the same weights
            (more depth, no parameters; default ``1``; docs/model.md).
        relative_positions: buckets of a learned relative position bias in every
            encoder layer's self-attention (:class:`~pyg_grapheme.nn.RelativePositionBias`,
            T5's: a scalar per head and bucketed reading-order distance; default ``32``,
            T5's; ``0``: none, attention then sees only the embedding's absolute
            positions; docs/model.md).
        relative_init: the bias table's initial values, ``"alibi"`` (default: ALiBi's
            distance penalties, so that from the start some heads look near and some
            far) or ``"zeros"`` (the layers start as without it; learnt too slowly to
            matter within a few thousand steps, docs/model.md). Checkpoints written
            before these defaults load without the bias (``relative_positions=0``).
        canvas_relative_positions: buckets of the same bias in every decoder layer's
            self-attention over the canvas (slot distance; started as
            ``relative_init`` says; default ``0``: none, the canvas's order is then its
            slot embeddings and the DAGConv along it; docs/model.md).
        canvas_align: ``"right"`` (default): each answer grapheme speaks with the last
            canvas node of its segment, so the answer's last grapheme is the canvas's
            last node and numbers line up by place value, units on the last slot, as in
            column arithmetic, and the canvas's copy of the question is anchored at its
            end (:func:`copy_sources`); ``"left"``: with the first, the answer's first
            grapheme on the first node (the default before; checkpoints that predate
            the option load with it). The likelihood is ``segmentation_nll(...,
            align=...)``, which :class:`~pyg_grapheme.training.GraphemeModule` passes
            from this attribute; docs/model.md, "The right-aligned canvas".

    Shapes:
        - **input:** a :class:`~torch_geometric.data.Batch` of text graphs (``x`` uint8
          ``[N, 8]``, ``edge_index`` ``[2, E]``, ``batch`` ``[N]``)
        - **output:** a ``Batch`` of answer chains with ``x`` ``[N', 8, 256]`` byte
          distributions, ``logits`` (their logs), ``edge_index``, ``edge_weight``
          ``[E']``, ``node_weight`` ``[N']``, ``batch`` ``[N']``, the pooling decisions
          ``cluster`` ``[T]``, ``merge_prob`` / ``merged`` / ``log_prob`` / ``merge_logit``
          (per canvas edge ``[T - B]``), and the canvas: ``canvas_log_probs``
          ``[T, 8, 256]``, ``canvas_batch`` ``[T]``.
    """

    def __init__(
        self,
        hidden: int = 128,
        heads: int = 4,
        encoder_layers: int = 2,
        decoder_layers: int = 2,
        max_answer_length: int = 32,
        ff_mult: int = 2,
        pool_threshold: float = 0.5,
        pool_tau: float = 0.5,
        pool_proj_channels: int | None = 32,
        dropout: float = 0.0,
        max_input_length: int = 4096,
        block: str = "gps",
        message_gate: float = 0.0,
        run_positions: int = 32,
        canvas_scale: float = 0.02,
        head_factorized: bool = False,
        encoder_gru: bool = False,
        decoder_gru: bool = False,
        decoder_repeats: int = 1,
        relative_positions: int = 32,
        relative_init: str = "alibi",
        canvas_relative_positions: int = 0,
        canvas_align: str = "right",
    ) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
        if max_answer_length < 1:
            raise ValueError(f"max_answer_length must be >= 1, got {max_answer_length}")
        self.hidden = hidden
        self.max_answer_length = max_answer_length
        self.max_input_length = max_input_length
        if block not in ("gps", "pre_ln"):
            raise ValueError(f"block must be 'gps' or 'pre_ln', got {block!r}")
        self.block = block
        if canvas_scale <= 0:
            raise ValueError(f"canvas_scale must be > 0, got {canvas_scale}")
        self.canvas_scale = canvas_scale
        if canvas_align not in ("left", "right"):
            raise ValueError(f"canvas_align must be 'left' or 'right', got {canvas_align!r}")
        self.canvas_align = canvas_align
        if decoder_repeats < 1:
            raise ValueError(f"decoder_repeats must be >= 1, got {decoder_repeats}")
        self.decoder_repeats = decoder_repeats
        self.encoder = GraphemeEncoder(hidden, run_positions=run_positions)
        # Gated from 0: ungated, the encoder's GRU learnt math2 slower (docs/model.md).
        self.gru = DAGGRU(hidden, hidden, gate=0.0) if encoder_gru else None
        self.canvas_gru = DAGGRU(hidden, hidden, gate=0.0) if decoder_gru else None
        if block == "gps":
            self.enc = nn.ModuleList(
                gps_layer(hidden, heads, dropout, relative_buckets=relative_positions,
                          relative_init=relative_init)
                for _ in range(encoder_layers))
        else:
            self.enc = nn.ModuleList(
                PreNormGraphBlock(hidden, heads, ff_mult, dropout, gate=message_gate,
                                  relative_buckets=relative_positions,
                                  relative_init=relative_init)
                for _ in range(encoder_layers)
            )
        self.enc_norm = nn.LayerNorm(hidden) if block == "pre_ln" else nn.Identity()
        self.slots = nn.Embedding(max_answer_length, hidden)
        self.canvas_norm = nn.LayerNorm(hidden)
        self.local = nn.ModuleList(
            DAGConv(hidden) if block == "gps" else GatedMessagePassing(hidden, gate=message_gate)
            for _ in range(decoder_layers)
        )
        self.dec = nn.ModuleList(
            nn.TransformerDecoderLayer(
                hidden, heads, ff_mult * hidden, dropout=dropout, activation="gelu",
                batch_first=True, norm_first=True,
            )
            for _ in range(decoder_layers)
        )
        self.canvas_relative = nn.ModuleList(
            RelativePositionBias(heads, canvas_relative_positions, init=relative_init)
            for _ in range(decoder_layers if canvas_relative_positions else 0)
        )
        self.dec_norm = nn.LayerNorm(hidden)
        self.pool = ThresholdMergePool(
            hidden, aggr="mean", threshold=pool_threshold, similarity="half_cosine",
            tau=pool_tau, proj_channels=pool_proj_channels,
        )
        self.head = ByteHead(hidden, factorized=head_factorized)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in (self.encoder, *self.enc, self.slots, self.canvas_norm,
                       *self.local, *self.canvas_relative, self.dec_norm, self.pool,
                       self.head):
            module.reset_parameters()
        for gru in (self.gru, self.canvas_gru):
            if gru is not None:
                gru.reset_parameters()
        if isinstance(self.enc_norm, nn.LayerNorm):
            self.enc_norm.reset_parameters()
        for layer in self.dec:
            reset_transformer_layer(layer)

    @property
    def theta(self) -> Tensor:
        """The merge threshold's logit (``sigmoid(theta)`` is the similarity threshold)."""
        return self.pool.theta

    @torch.compiler.disable(recursive=False)
    def forward(self, batch: Batch, num_out: Tensor | None = None) -> Batch:
        """Answer graphs for a batch of text graphs.

        ``num_out`` (``[B]``, optional) forces each answer to that many nodes: the pool
        cuts the canvas where its own merge logits are lowest
        (:func:`~pyg_grapheme.nn.pool.select.forced_merges`; the teacher forcing of the
        segmentation, for losses that need the target's length). Without it the
        threshold decides.

        Under :func:`torch.compile` this frame stays eager (``recursive=False``: what it
        calls is compiled): it reads the batch's sizes, the longest question among them
        (a host sync), and builds the output ``Batch``, both outside :mod:`torch._dynamo`,
        and calls :meth:`tensor_forward`, the compiled frame, with plain tensors and ints.
        """
        x, chain, vec, num_graphs, sizes, ptr, longest = _read_sizes(batch)
        if longest > self.max_input_length:
            raise ValueError(
                f"a question has {longest} graphemes, more than max_input_length="
                f"{self.max_input_length} (memory grows as its square); split the text "
                "or raise max_input_length"
            )
        _check_length(self.encoder, longest)
        fields = self.tensor_forward(x, chain, vec, sizes, ptr, num_graphs, longest, num_out)
        return _output_batch(num_graphs, fields)

    def tensor_forward(
        self,
        x: Tensor,
        chain: Tensor,
        vec: Tensor,
        sizes: Tensor,
        ptr: Tensor,
        num_graphs: int,
        longest: int,
        num_out: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """:meth:`forward` on tensors: the question graphs' bytes ``x`` ``[N, 8]``,
        reading-order edges ``chain``, batch vector ``vec`` ``[N]``, nodes per graph
        ``sizes`` ``[B]`` and their pointers ``ptr`` ``[B + 1]``, ``B = num_graphs``
        and the largest size ``longest``, which the dense attention pads to. Returns the
        output ``Batch``'s fields. Every size is an argument or a shape: the only graph
        break under :func:`torch.compile` is the pool's connected components
        (:meth:`ThresholdMergePool.connect`), called from this frame."""
        n = x.size(0)
        h = self.encoder(x, vec, ptr)
        if self.gru is not None:
            h = h + self.gru(h, chain, vec, chains=True, batch_size=num_graphs,
                             max_num_nodes=longest)
        for conv in self.enc:
            h = conv(h, chain, vec, batch_size=num_graphs, max_num_nodes=longest)
        h = self.enc_norm(h)

        # The canvas: T slots per question, contiguous per graph, in chain order.
        T = self.max_answer_length
        cvec = torch.arange(num_graphs, device=x.device).repeat_interleave(T)
        # Each slot starts as a copy of a question node (the uniform copy of
        # non-autoregressive decoders, Gu et al. 2018): canvases of different questions
        # differ from the first step, which a shared query or the question's mean does not.
        # The speaking end copies the question's end (copy_sources; docs/model.md).
        src = copy_sources(ptr, sizes, cvec, T, self.canvas_align)
        empty = sizes[cvec] == 0
        c = torch.where(empty.unsqueeze(1), 0.0, h[src.clamp(min=0, max=max(n - 1, 0))])
        c = self.canvas_norm(self.slots.weight.repeat(num_graphs, 1) + c)
        if self.canvas_scale != 1.0:
            c = c * self.canvas_scale
        cchain = canvas_chain(num_graphs, T, x.device)
        mem, mem_mask = to_dense_batch(h, vec, batch_size=num_graphs, max_num_nodes=longest)
        # Every canvas has T nodes: its dense batch is a view, with nothing to mask, and
        # one [heads, T, T] bias per layer serves every canvas.
        biases: list[Tensor | None] = [
            rel(T, 1, dtype=c.dtype).repeat(num_graphs, 1, 1) for rel in self.canvas_relative
        ] or [None] * len(self.dec)
        layers = [*zip(self.local, self.dec, biases, strict=True)] * self.decoder_repeats
        for local, layer, bias in layers:
            c = local(c, cchain)
            cd = layer(c.view(num_graphs, T, -1), mem, tgt_mask=bias,
                       memory_key_padding_mask=~mem_mask)
            c = cd.reshape(num_graphs * T, -1)
        if self.canvas_gru is not None:
            c = c + self.canvas_gru(c, cchain, cvec, chains=True, batch_size=num_graphs,
                                    max_num_nodes=T)
        c = self.dec_norm(c)
        log_probs = self.head(c).log_softmax(dim=-1)

        # The pool's three steps in this frame: its graph break (connect) then splits
        # only this frame's graph, not every frame of a nested call. The selection
        # carries its merge logits: scoring the edges again cost a projection, a cosine
        # and their backward per step.
        sel = self.pool.select(c, cchain, cvec, num_clusters=num_out)
        z = sel.merge_logit
        assert z is not None  # ThresholdMergePool.select always sets it
        out = self.pool.coarsen(c, sel, self.pool.connect(sel))
        # A cluster is a contiguous run: its first node has the smallest index, its last
        # the largest; the aligned end speaks.
        left = self.canvas_align == "left"
        speaker = torch.full((out.x.size(0),), c.size(0) if left else -1, dtype=torch.long,
                             device=x.device)
        speaker = speaker.scatter_reduce(0, out.cluster,
                                         torch.arange(c.size(0), device=x.device),
                                         reduce="amin" if left else "amax")
        logits = log_probs[speaker]
        counts = degree(out.batch, num_graphs, dtype=torch.long)
        return dict(
            x=logits.softmax(dim=-1),
            logits=logits,
            edge_index=out.edge_index,
            edge_weight=out.edge_weight,
            node_weight=out.node_weight,
            batch=out.batch,
            ptr=cumsum(counts),
            cluster=out.cluster,
            merge_prob=out.merge_prob,
            merged=out.merged,
            log_prob=out.log_prob,
            merge_logit=z,
            canvas_log_probs=log_probs,
            canvas_batch=cvec,
        )

    @torch.no_grad()
    def generate(self, texts: str | Sequence[str]) -> str | list[str]:
        """Answer each text: run the model and decode its output graph to a string.

        Raises:
            ValueError: an empty question (it has no nodes to answer from), or one longer
                than ``max_input_length``.
        """
        single = isinstance(texts, str)
        items = [texts] if isinstance(texts, str) else list(texts)
        if not items:
            return []
        for i, t in enumerate(items):
            if not t:
                raise ValueError(f"question {i} is empty: there is nothing to answer from")
        was_training = self.training
        self.eval()
        try:
            device = next(self.parameters()).device
            batch = Batch.from_data_list([text_to_graph(t) for t in items]).to(device)
            answers = decode_graphs(self(batch))
        finally:
            self.train(was_training)
        return answers[0] if single else answers


def copy_sources(ptr: Tensor, sizes: Tensor, cvec: Tensor, T: int, align: str) -> Tensor:
    r"""The question node each canvas slot starts as a copy of (``[B * T]``, global
    indices; ``ptr`` ``[B + 1]``, ``sizes`` ``[B]``, ``cvec`` ``[B * T]`` the question of
    each slot, ``T`` consecutive slots per question): slot :math:`k` of a question
    of :math:`n` graphemes copies node :math:`\lfloor k n / T \rfloor` (``"left"``), or
    node :math:`n - 1 - \lfloor (T - 1 - k) n / T \rfloor` (``"right"``: anchored at the
    question's end, so the speaking end, the last slot, copies the question's last
    grapheme as the left-aligned speaker copies its first). Both in reading order. An
    empty question's slots point at ``ptr[g] - 1`` or ``ptr[g]``: the caller masks them."""
    k = torch.arange(T, device=ptr.device).repeat(sizes.numel())
    n = sizes[cvec]
    if align == "right":
        return ptr[cvec] + n - 1 - torch.div((T - 1 - k) * n, T, rounding_mode="floor")
    return ptr[cvec] + torch.div(k * n, T, rounding_mode="floor")


@torch.compiler.disable
def _read_sizes(batch: Batch) -> tuple[Tensor, Tensor, Tensor, int, Tensor, Tensor, int]:
    """``(x, chain, vec, num_graphs, sizes, ptr, longest)`` of a batch of text graphs
    (:func:`~pyg_grapheme.nn.blocks.reading_order`, nodes per graph, their pointers and
    the largest): the one size read from the data before the pool (a host sync, which
    would split the compiled graph), here outside :mod:`torch._dynamo`."""
    vec, num_graphs, chain = reading_order(batch)
    sizes = degree(vec, num_graphs, dtype=torch.long)
    longest = int(sizes.max()) if batch.x.size(0) else 0
    return batch.x, chain, vec, num_graphs, sizes, cumsum(sizes), longest


@torch.compiler.disable
def _check_length(encoder: GraphemeEncoder, longest: int) -> None:
    encoder.check_length(longest, stacklevel=4)


@torch.compiler.disable
def _output_batch(num_graphs: int, fields: dict[str, Tensor]) -> Batch:
    """The model's output container, built outside :mod:`torch._dynamo`: PyG's ``Batch``
    creates its class in a metaclass call that dynamo traces wrongly (the compiled model
    returned a ``Batch`` without its fields)."""
    pred = Batch(**fields)
    pred._num_graphs = num_graphs
    return pred


def canvas_chain(num_graphs: int, length: int, device: torch.device | None = None) -> Tensor:
    """:func:`chain_edges` of ``num_graphs`` chains of ``length`` nodes each, from the
    sizes alone (no mask over the batch vector: static shapes under compile)."""
    src = torch.arange(length - 1, device=device) + length * torch.arange(
        num_graphs, device=device).unsqueeze(1)
    src = src.reshape(-1)
    return torch.stack([src, src + 1])


def chain_edges(batch: Tensor) -> Tensor:
    """Edges ``i -> i + 1`` between consecutive nodes of the same graph, ``[2, E]``
    (nodes of a graph contiguous and in chain order, PyG's layout)."""
    src = torch.arange(max(batch.numel() - 1, 0), device=batch.device)
    src = src[batch[1:] == batch[:-1]]
    return torch.stack([src, src + 1])


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
