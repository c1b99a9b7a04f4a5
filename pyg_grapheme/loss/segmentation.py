r"""The exact likelihood of a target chain under a learnable-threshold pool on a chain.

A chain of :math:`T` predicted nodes (the model's *canvas*) is pooled by merging edge
:math:`t \to t+1` with probability :math:`p_t = \sigma(z_t)` (the merge logits of
:class:`~pyg_grapheme.nn.ThresholdMergePool`); every pattern of merges is a contiguous
segmentation, i.e. a quotient graph that is again a chain. Each canvas node :math:`t`
carries byte distributions :math:`q_t`; a segment (a pooled node) speaks with the voice
of its first node (``align="left"``: the answer's first grapheme is the canvas's first
node) or of its last (``align="right"``: its last grapheme is the canvas's last node,
numbers line up by place value as in column arithmetic; the same sum on the mirrored
chain). The probability that pooling and emission produce the target chain
:math:`y_1 \dots y_M` sums over every segmentation into exactly :math:`M` segments,
segment :math:`j` starting at node :math:`s_j`:

.. math::
    P(y) = \sum_{1 = s_1 < s_2 < \dots < s_M \le T} \;
        \prod_{j=1}^{M} q_{s_j}(y_j)
        \prod_{t \notin \{s_2 - 1, \dots, s_M - 1\}} p_t
        \prod_{j=2}^{M} (1 - p_{s_j - 1}).

Summed over all targets of all lengths this is 1: a distribution over answers. It is
the forward algorithm of a left-to-right HMM (as CTC, Graves et al. 2006, but the
transitions are the pool's merge decisions instead of a blank symbol): with
:math:`\alpha_t(j)` the log-probability that nodes :math:`1..t` form segments
:math:`1..j` and emitted :math:`y_1..y_j`,

.. math::
    \alpha_{t+1}(j) = \operatorname{logaddexp}\big(
        \alpha_t(j) + \log p_t,\; \alpha_t(j-1) + \log(1 - p_t) + \log q_{t+1}(y_j)\big),

and :math:`\log P(y) = \alpha_T(M)`. :math:`O(T M)` per pair, batched over pairs and
differentiated by autograd: the gradient is exact for every emission, every merge logit
and so for the pool's threshold, with no forced count and no estimator
(``../shared/reference/anchors.md`` section 9: the contiguous segmentations of a chain
are exactly CTC's monotone alignments).

References:
    - A. Graves, S. Fernandez, F. Gomez, J. Schmidhuber, "Connectionist Temporal
      Classification", ICML 2006.
    - J. Libovicky, J. Helcl, "End-to-End Non-Autoregressive Neural Machine Translation
      with Connectionist Temporal Classification", EMNLP 2018.
    - L. Rabiner, "A tutorial on hidden Markov models", Proc. IEEE 77(2), 1989 (the
      forward algorithm).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.utils import cumsum, to_dense_batch

__all__ = ["reverse_within_graphs", "segmentation_log_likelihood", "segmentation_nll"]


def _dense_chain_logits(merge_logit: Tensor, batch: Tensor, num_graphs: int, T: int) -> Tensor:
    """Merge logits of the chain edges ``t -> t+1`` as ``[B, T - 1]`` (graph order)."""
    # Edge t -> t+1 of a graph is stored at its source node's position.
    z = merge_logit.new_zeros(batch.numel())
    same = batch[1:] == batch[:-1]
    z[:-1][same] = merge_logit
    zd = to_dense_batch(z, batch, batch_size=num_graphs, max_num_nodes=T)[0]
    return zd[:, :-1]


def reverse_within_graphs(batch: Tensor, num_graphs: int) -> Tensor:
    """The permutation that reverses the order of each graph's nodes (``[N]``; ``batch``
    sorted, each graph's nodes contiguous, PyG's layout): ``x[perm]`` reads every graph
    backwards."""
    ptr = cumsum(torch.bincount(batch, minlength=num_graphs))
    return ptr[batch] + ptr[batch + 1] - 1 - torch.arange(batch.numel(), device=batch.device)


def segmentation_log_likelihood(
    log_probs: Tensor,
    batch: Tensor,
    merge_logit: Tensor,
    target: Tensor,
    target_batch: Tensor,
    num_graphs: int | None = None,
    align: str = "left",
) -> Tensor:
    r""":math:`\log P(y)` of each target chain (see the module docstring), ``[B]``.

    Args:
        log_probs: ``[T, S, K]`` log byte distributions of the canvas nodes (``S`` byte
            slots of ``K`` classes; ``log_softmax`` of :class:`~pyg_grapheme.nn.ByteHead`).
        batch: ``[T]`` sorted graph of each canvas node; each graph's nodes contiguous in
            chain order.
        merge_logit: ``[T - B']`` logit of the merge probability of every chain edge
            ``t -> t+1`` inside a graph, in node order (``B'`` non-empty graphs).
        target: ``[M, S]`` byte classes of the target graphemes (the ``x`` of
            :func:`~pyg_grapheme.text_to_graph`), contiguous per graph in reading order.
        target_batch: ``[M]`` sorted graph of each target node.
        num_graphs: ``B`` (default: read off the batch vectors).
        align: ``"left"`` (default): a segment speaks with its first node; ``"right"``:
            with its last (the module docstring). For a
            :class:`~pyg_grapheme.nn.GraphTransformNet`'s output pass its
            ``canvas_align`` (``"right"`` by default).

    Returns ``[B]``; ``-inf`` where no segmentation exists (a target longer than its
    canvas, or an empty target with a non-empty canvas). An empty canvas with an
    empty target has likelihood 1.
    """
    if log_probs.dim() != 3:
        raise ValueError(f"log_probs must be [T, S, K], got {tuple(log_probs.shape)}")
    if target.dim() != 2 or target.size(1) != log_probs.size(1):
        raise ValueError(
            f"target must be [M, {log_probs.size(1)}] byte classes, got {tuple(target.shape)}"
        )
    if align not in ("left", "right"):
        raise ValueError(f"align must be 'left' or 'right', got {align!r}")
    if num_graphs is None:
        num_graphs = max(int(batch.max()) if batch.numel() else -1,
                         int(target_batch.max()) if target_batch.numel() else -1) + 1
    # Under mixed precision the sums over a canvas lose too much in bf16/fp16: float32 at
    # least, outside autocast.
    dtype = torch.promote_types(log_probs.dtype, torch.float32)
    with torch.autocast(log_probs.device.type, enabled=False):
        return _forward(log_probs.to(dtype), batch, merge_logit.to(dtype), target,
                        target_batch, num_graphs, mirror=align == "right")


def _forward(log_probs, batch, merge_logit, target, target_batch, num_graphs, mirror):
    B = num_graphs
    dev, dtype = log_probs.device, log_probs.dtype
    t_len = torch.bincount(batch, minlength=B)
    m_len = torch.bincount(target_batch, minlength=B)
    T, M = int(t_len.max()) if B else 0, int(m_len.max()) if B else 0
    out = torch.full((B,), float("-inf"), dtype=dtype, device=dev)
    out = torch.where((t_len == 0) & (m_len == 0), 0.0, out)
    if T == 0 or M == 0:
        return out
    if mirror:
        # Right alignment: the last node of a segment is the first of the mirrored
        # chain's segment. Mirror the small tensors (targets, emissions, merge logits),
        # not the [T, S, K] log-probs.
        target = target[reverse_within_graphs(target_batch, B)]
    emit_nodes = _emissions(log_probs, batch, target, target_batch, B, M)
    if mirror:
        emit_nodes = emit_nodes[reverse_within_graphs(batch, B)]
        edge_batch = batch[:-1][batch[1:] == batch[:-1]]
        merge_logit = merge_logit[reverse_within_graphs(edge_batch, B)]
    emit = to_dense_batch(emit_nodes, batch, batch_size=B, max_num_nodes=T)[0]
    z = _dense_chain_logits(merge_logit, batch, B, T)
    ll = _chain_forward(emit, z, t_len, m_len)
    ok = (m_len > 0) & (m_len <= t_len)
    return torch.where(ok, ll, out)


def _emissions(log_probs: Tensor, batch: Tensor, target: Tensor, target_batch: Tensor,
               num_graphs: int, M: int) -> Tensor:
    """``E[n, j] = sum_s log q_n[s, y_j[s]]``, ``[N, M]``: every canvas node ``n`` against
    every target grapheme ``j`` of its graph (``j`` past the graph's length: padding).
    A gather of ``S`` entries per pair, not a product with the targets' one-hot over
    all ``S * K`` classes: the log-probs are the big tensor here."""
    y = to_dense_batch(target.long(), target_batch, batch_size=num_graphs, max_num_nodes=M)[0]
    return log_probs.gather(2, y[batch].transpose(1, 2)).sum(1)


def _chain_forward(emit: Tensor, z: Tensor, t_len: Tensor, m_len: Tensor) -> Tensor:
    """The forward algorithm of the module docstring: ``alpha_T(M)`` per pair, ``[B]``,
    from emissions ``[B, T, M]`` and chain merge logits ``[B, T - 1]`` (only pairs with
    ``1 <= M <= T`` are meaningful)."""
    B, T, M = emit.shape
    log_merge, log_cut = F.logsigmoid(z), F.logsigmoid(-z)
    # A large finite "impossible" keeps logaddexp's gradient finite (-inf - -inf is nan).
    neg = torch.finfo(emit.dtype).min / 4
    alpha = torch.full((B, M), neg, dtype=emit.dtype, device=emit.device)
    alpha[:, 0] = emit[:, 0, 0]
    for t in range(1, T):
        stay = alpha + log_merge[:, t - 1 : t]
        move = F.pad(alpha[:, :-1], (1, 0), value=neg) + log_cut[:, t - 1 : t] + emit[:, t]
        nxt = torch.logaddexp(stay, move).clamp_min(neg)
        alpha = torch.where((t < t_len).unsqueeze(1), nxt, alpha)
    idx = (m_len - 1).clamp_min(0).unsqueeze(1)
    return alpha.gather(1, idx).squeeze(1)


def segmentation_nll(
    log_probs: Tensor,
    batch: Tensor,
    merge_logit: Tensor,
    target: Tensor,
    target_batch: Tensor,
    num_graphs: int | None = None,
    reduction: str = "mean",
    align: str = "left",
) -> Tensor:
    r"""Negative log-likelihood :math:`-\log P(y) / M` per target grapheme (as
    :func:`torch.nn.functional.ctc_loss` normalises by the target length), mean over
    pairs (``reduction="mean"``), summed (``"sum"``) or per pair (``"none"``);
    ``align`` as in :func:`segmentation_log_likelihood`.

    Raises:
        ValueError: a pair has no segmentation: its target has more graphemes than its
            canvas has nodes, or it is empty while the canvas is not (the pair is named).
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    ll = segmentation_log_likelihood(
        log_probs, batch, merge_logit, target, target_batch, num_graphs, align=align
    )
    bad = torch.isneginf(ll).nonzero().view(-1)
    if bad.numel():
        B = ll.numel()
        t_len = torch.bincount(batch, minlength=B)
        m_len = torch.bincount(target_batch, minlength=B)
        i = int(bad[0])
        raise ValueError(
            f"pair {i} of the batch cannot be produced: its target has {int(m_len[i])} "
            f"graphemes and its canvas {int(t_len[i])} nodes (a non-empty canvas makes "
            "1..T graphemes); raise the model's upsampling or drop the pair"
        )
    m_len = torch.bincount(target_batch, minlength=ll.numel()).clamp_min(1).to(ll.dtype)
    per_pair = -ll / m_len
    if reduction == "none":
        return per_pair
    return per_pair.mean() if reduction == "mean" else per_pair.sum()
