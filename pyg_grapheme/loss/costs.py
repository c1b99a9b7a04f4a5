r"""Node costs of the graph-to-graph alignment and its Riesen-Bunke layout with dummies.

:func:`node_cost_matrix` gives the substitution cost :math:`C^{\mathrm{sub}}` between
padded node features. The alignment adds one insertion row and one deletion column
(Riesen and Bunke 2009): rows are the ``n`` predicted nodes plus a dummy of mass
:math:`\sum_j b_j`, columns the ``m`` target nodes plus a dummy of mass :math:`\sum_i a_i`,

.. math::
    \tilde C = \begin{pmatrix} C^{\mathrm{sub}} & c\, \mathbf 1 \\
    c\, \mathbf 1^\top & 0 \end{pmatrix},

with :math:`c` the insertion/deletion cost (:func:`_augment_cost`,
:func:`_augment_masses`).

:func:`order_cost_matrix` is an optional positional term for graphs whose node order
means something (text in reading order): the normalised distance of a node pair from the
diagonal of the alignment, the temporal prior of the order-preserving Wasserstein
distance (Su and Hua 2017).

References:
    - K. Riesen, H. Bunke, "Approximate graph edit distance computation by means of
      bipartite graph matching", Image and Vision Computing 27(7), 2009.
    - B. Su, G. Hua, "Order-preserving Wasserstein distance for sequence matching",
      CVPR 2017.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["node_cost_matrix", "order_cost_matrix"]

NODE_COSTS = ("dot", "sqeuclidean", "tv", "nll")
#: Floor of the agreement under the log of ``node_cost="nll"``: a certainly wrong slot
#: costs -log(1e-6) = 13.8, not ~690 (float64 tiny), so it cannot swamp the alignment.
NLL_FLOOR = 1e-6


def _tiny_agree(dtype: torch.dtype) -> float:
    # Floor for the per-slot agreement before the log: keeps log finite and the
    # gradient 1/x below ~1e35 (float32); floor**(1/S) ~ 4e-5 for S = 8, so a one-slot
    # mismatch of one-hot rows costs 1 - 4e-5.
    return 1e-35 if dtype == torch.float32 else 1e-300


def _check_node_cost(kind: str) -> None:
    if kind not in NODE_COSTS:
        raise ValueError(f"node_cost must be one of {NODE_COSTS}, got {kind!r}")


def node_cost_matrix(xp: Tensor, xt: Tensor, kind: str = "dot") -> Tensor:
    r"""Substitution cost between padded node features, ``[B, n, m]``.

    For ``x`` of shape ``[B, n, D]``:

    - ``"dot"``: :math:`1 - \langle p, q\rangle` (for one-hot rows: 0 if equal, else 1,
      the total variation; for distributions, the probability that two independent draws
      differ). A batched matmul, no ``[n, m, D]`` intermediate.
    - ``"sqeuclidean"``: :math:`\lVert x - y\rVert^2 / (2D)`.
    - ``"tv"``: :math:`\tfrac12\lVert p - q\rVert_1`.
    - ``"nll"``: :math:`-\log \max(\langle p, q\rangle, 10^{-6})`, the negative
      log-likelihood of the target row ``q`` (one-hot) under the predicted distribution
      ``p`` (probabilities); with slots, the mean over slots (below). Not symmetric: pass
      predictions as ``xp``. Pair it with ``indel_cost`` of the same scale
      (:func:`~pyg_grapheme.loss.structural_loss` defaults it to :math:`\log K`, the NLL
      of a uniform prediction).

    For slot-structured ``x`` of shape ``[B, n, S, K]`` (``S`` distributions over ``K``
    classes), ``"dot"`` is one minus the geometric mean over slots of the agreement
    probabilities,

    .. math::
        C_{ij} = 1 - \exp\Big(\frac1S \sum_s \log \langle p_{is}, q_{js}\rangle\Big),

    0/1 on one-hot rows; unlike the product, its gradient does not vanish for
    near-uniform predictions. The log is taken of the agreement clamped at a tiny floor
    (no NaN). ``"nll"`` is
    :math:`C_{ij} = -\frac1S \sum_s \log \max(\langle p_{is}, q_{js}\rangle, 10^{-6})`.
    The other kinds flatten the slots.
    """
    _check_node_cost(kind)
    if xp.dim() == 4:
        if kind == "dot":
            agree = xp.transpose(1, 2) @ xt.permute(0, 2, 3, 1)  # [B, S, n, m]
            logg = agree.clamp_min(_tiny_agree(agree.dtype)).log().mean(1)
            return 1.0 - logg.exp()
        if kind == "nll":
            agree = xp.transpose(1, 2) @ xt.permute(0, 2, 3, 1)  # [B, S, n, m]
            return -agree.clamp_min(NLL_FLOOR).log().mean(1)
        xp = xp.flatten(2)
        xt = xt.flatten(2)
    if kind == "dot":
        return 1.0 - xp @ xt.transpose(1, 2)
    if kind == "nll":
        return -(xp @ xt.transpose(1, 2)).clamp_min(NLL_FLOOR).log()
    if kind == "sqeuclidean":
        D = xp.size(-1)
        sq = (xp * xp).sum(-1).unsqueeze(2) + (xt * xt).sum(-1).unsqueeze(1)
        return (sq - 2.0 * xp @ xt.transpose(1, 2)).clamp_min(0.0) / (2.0 * D)
    if xp.size(1) == 0 or xt.size(1) == 0:
        return xp.new_zeros(xp.size(0), xp.size(1), xt.size(1))
    return 0.5 * torch.cdist(xp, xt, p=1)


def order_cost_matrix(n_pred: Tensor, n_target: Tensor, n: int, m: int) -> Tensor:
    r"""How far node pair :math:`(i, j)` lies from the alignment's diagonal, ``[B, n, m]``.

    For graphs of :math:`N` and :math:`M` nodes (``n_pred``, ``n_target``: ``[B]``
    counts) whose nodes are numbered in an order that means something (a text graph's
    reading order),

    .. math::
        \ell_{ij} = \frac{|(i + \tfrac12)/N - (j + \tfrac12)/M|}
            {\sqrt{1/N^2 + 1/M^2}},

    the order-preserving Wasserstein distance's distance to the diagonal (Su and Hua
    2017): for equal lengths :math:`|i - j|/\sqrt2`, a shift by one node. Added to the
    substitution cost (``structural_loss(order_weight=...)``) it makes a permuted chain
    cost its displacements: without it a prediction with the right graphemes in the
    wrong order aligns by content at node cost 0, and the envelope gradient of the edge
    term cannot move node features, so nothing teaches the order. Constant (no
    gradient); padding rows and columns are 0-mass and their values are unused.
    """
    dtype = torch.promote_types(n_pred.dtype, torch.float32)
    N = n_pred.to(dtype).clamp_min(1.0)[:, None, None]
    M = n_target.to(dtype).clamp_min(1.0)[:, None, None]
    i = torch.arange(n, device=n_pred.device, dtype=dtype)[None, :, None]
    j = torch.arange(m, device=n_pred.device, dtype=dtype)[None, None, :]
    return ((i + 0.5) / N - (j + 0.5) / M).abs() * torch.rsqrt(N.pow(-2) + M.pow(-2))


def _indel_cost(indel_cost: float | None, kind: str, num_classes: int) -> float:
    """The insertion/deletion cost: given, else 1 (unit-cost GED), or :math:`\\log K`
    (the NLL of a uniform prediction over ``K`` classes) for ``"nll"``."""
    if indel_cost is not None:
        return float(indel_cost)
    return math.log(num_classes) if kind == "nll" else 1.0


def _augment_cost(Csub: Tensor, indel_cost: float) -> Tensor:
    """:math:`\\tilde C` ``[B, n+1, m+1]``: ``indel_cost`` on the dummy row and column,
    0 in the dummy-dummy cell (autograd flows through ``Csub``)."""
    n, m = Csub.size(1), Csub.size(2)
    Ct = F.pad(Csub, (0, 1, 0, 1), value=indel_cost)
    dd = torch.zeros(n + 1, m + 1, dtype=torch.bool, device=Ct.device)
    dd[n, m] = True
    return torch.where(dd, 0.0, Ct)


def _augment_masses(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The augmented marginals ``[B, n+1]``, ``[B, m+1]`` (the insertion row carries
    :math:`\\sum b`, the deletion column :math:`\\sum a`) and :math:`\\log\\rho`, ``[B]``,
    :math:`\\rho = \\min(\\sum a, \\sum b)` (the reference measure's dummy-dummy cell)."""
    sum_a, sum_b = a.sum(1), b.sum(1)
    A = torch.cat([a, sum_b.unsqueeze(1)], 1)
    Bm = torch.cat([b, sum_a.unsqueeze(1)], 1)
    log_rho = torch.minimum(sum_a, sum_b).clamp_min(torch.finfo(a.dtype).tiny).log()
    return A, Bm, log_rho
