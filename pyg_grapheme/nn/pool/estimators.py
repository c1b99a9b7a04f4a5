r"""The threshold's gradient: the forward pass of the pool is discrete, so
:math:`\theta` (and, through :math:`p`, the features) learn from one of two estimators.

**Expected counts** (``estimator="counts"``). With every edge merging independently
with probability :math:`p_e`, :math:`\partial\, \mathbb{E}[\#\text{clusters}] /
\partial p_e = -P(e \text{ is a bridge})`. Each cluster's share of the expected node
count replaces that probability by :math:`\kappa_e`, its value at the hard partition:

.. math::
    w_c = 1 + \sum_{e \in K_c} \kappa_e (1 - p_e)
          - \tfrac12 \sum_{e \in \partial c} \kappa_e p_e,
    \qquad \sum_c w_c = N - \sum_e \kappa_e p_e

with :math:`K_c` the kept (merged, non-loop) edges inside cluster :math:`c`,
:math:`\partial c` the edges leaving or entering it, :math:`\kappa_e = (n_c - 1) /
|K_c|` for kept edges (a spanning tree of the :math:`n_c` nodes has :math:`n_c - 1`
bridges), :math:`\kappa_e = 1 / m_{ab}` for an edge between clusters :math:`a \ne b`
joined by :math:`m_{ab}` input edges in either direction, and :math:`\kappa_e = 0` for
non-merged edges inside a cluster (no bridge). Each coarse edge :math:`g = (a \to b)`
gets its share of the expected edge count,

.. math::
    M_g = \prod_{e \to g} (1 - p_e) + \lambda_a A_a + \lambda_b A_b, \qquad
    A_c = \sum_{e \in K_c} (1 - p_e),

the probability that none of its input edges merges (:math:`p` clipped at :math:`1 -
\epsilon`) plus a share :math:`\lambda_c = 1 / \deg c` of the kept edges at its ends
that would come back as edges if they did not merge (lost for a cluster without coarse
edges; its node mass still carries that gradient). On a forest stored once or in both
directions (chains: the text graph) both are exact, :math:`\sum_c w_c = N - \sum_e p_e`
and, with at least two clusters, :math:`\sum_g M_g = \sum_e (1 - p_e)`; with cycles
they are first order. :class:`_ExpectedCounts` passes their gradient straight through
node masses and edge weights whose value stays 1 (the tests check it against
plain-autograd references of :math:`w_c` and :math:`M_g`, ``tests/nn/pool_reference.py``).

**Score function** (``estimator="score"``): sampled decisions and
:func:`score_function_loss`, unbiased, :math:`K \ge 2` forward passes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pyg_grapheme.nn.pool.quotient import Quotient

ESTIMATOR = ("counts", "score")


def bridge_weights(kept: Tensor, q: Quotient, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    r""":math:`\kappa_e` and :math:`\lambda_e` (module docstring) of every input edge,
    each :obj:`[E]`, at the hard partition :obj:`q`."""
    cu, num_clusters, coarse_edge_index = q.cu, q.num_clusters, q.edge_index
    size = q.size.to(dtype)
    num_kept = torch.bincount(cu, weights=kept.to(dtype), minlength=num_clusters).to(dtype)
    deg = torch.bincount(coarse_edge_index.view(-1), minlength=num_clusters).to(dtype)
    per_cluster = torch.stack([
        (size - 1.0) / num_kept.clamp(min=1.0),
        torch.where(deg > 0, 1.0 / deg.clamp(min=1.0), 0.0),
    ], dim=1)
    per_edge = torch.where(kept.unsqueeze(1), per_cluster.index_select(0, cu), 0.0)
    kappa, lam = per_edge[:, 0].contiguous(), per_edge[:, 1].contiguous()
    key = q.key
    num_coarse = key.numel()
    if num_coarse > 0:
        mult = q.count.to(dtype)
        # Add the reverse direction (found by search); DAG-ordered edges have none.
        if not bool((coarse_edge_index[0] < coarse_edge_index[1]).all()):
            rev = coarse_edge_index[1] * num_clusters + coarse_edge_index[0]
            pos = torch.searchsorted(key, rev).clamp(max=num_coarse - 1)
            found = key.index_select(0, pos) == rev
            mult = mult + torch.where(found, mult.index_select(0, pos), 0.0)
        kappa[q.edge_id] = mult.reciprocal().index_select(0, q.inverse)
    return kappa, lam


class _ExpectedCounts(torch.autograd.Function):
    r"""Straight-through expected counts in one autograd node.

    Forward: node masses :obj:`[C]`, all exactly 1, and the pooled edge weights
    :obj:`[G]` unchanged (1 without input weights), i.e. times multipliers :math:`M_g = 1`.
    Backward: the gradient of :math:`w_c` and :math:`M_g` (module docstring) with respect
    to :math:`p`, written out because plain autograd through them builds ~40 nodes:

    .. math::
        \frac{\partial L}{\partial p_e} = -\frac{\kappa_e}{2}
        \Big(\frac{\partial L}{\partial n'_{c_u}} + \frac{\partial L}{\partial n'_{c_v}}\Big)
        - \frac{\partial L}{\partial M_g} \prod_{e' \to g,\, e' \ne e} (1 - p_{e'})
        - \lambda_e \sum_{g \ni c_u} \frac{\partial L}{\partial M_g}
    """

    @staticmethod
    def forward(ctx, p, weight, kappa, lam, cu, cv, coarse_edge_index, edge_id, inverse,
                num_clusters, eps):
        ctx.save_for_backward(p, weight, kappa, lam, cu, cv, coarse_edge_index, edge_id, inverse)
        ctx.eps = eps
        node_weight = p.new_ones(num_clusters)
        if weight is None:
            return node_weight, p.new_ones(coarse_edge_index.size(1))
        return node_weight, weight.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_node, grad_weight):
        p, weight, kappa, lam, cu, cv, coarse_edge_index, edge_id, inverse = ctx.saved_tensors
        grad_p = (grad_node.index_select(0, cu) + grad_node.index_select(0, cv)) * kappa
        grad_p = -0.5 * grad_p
        if edge_id.numel() > 0:
            # d(w M)/dM with M = 1: the gradient reaching the multiplier M_g
            grad_mult = grad_weight if weight is None else grad_weight * weight
            grad_mult = grad_mult.reshape(grad_mult.size(0), -1).sum(-1)
            pe = p.index_select(0, edge_id)
            log_q = torch.log1p(-pe.clamp(max=1.0 - ctx.eps))
            log_s = log_q.new_zeros(grad_mult.numel()).index_add_(0, inverse, log_q)
            # prod over the other parallel edges; the clip's gradient is zero
            others = torch.exp(log_s.index_select(0, inverse) - log_q) * (pe <= 1.0 - ctx.eps)
            grad_p.index_add_(0, edge_id, -grad_mult.index_select(0, inverse) * others)
            at = grad_node.new_zeros(grad_node.numel())
            at.index_add_(0, coarse_edge_index[0], grad_mult)
            at.index_add_(0, coarse_edge_index[1], grad_mult)
            grad_p -= lam * at.index_select(0, cu)
        grad_w = grad_weight if weight is not None and ctx.needs_input_grad[1] else None
        return (grad_p, grad_w) + (None,) * 9


def score_function_loss(losses: Tensor, log_probs: Tensor) -> Tensor:
    r"""Surrogate whose gradient is the score-function (REINFORCE) estimate with a
    leave-one-out baseline, plus the pathwise gradient of the losses:

    .. math::
        \frac1K \sum_k \Big[ L_k + \mathrm{sg}\big(L_k - \tfrac{1}{K-1}
        \textstyle\sum_{j \ne k} L_j\big) \log P(m^{(k)}) \Big]

    (:math:`\mathrm{sg}` = stop-gradient; the baseline of Kool et al., "Buy 4 REINFORCE
    samples, get a baseline for free!", ICLR DeepRLStructPred workshop 2019).

    Args:
        losses (torch.Tensor): :obj:`[K, ...]`, the loss of each of :math:`K \ge 2`
            independent samples (e.g. per graph, :obj:`[K, B]`).
        log_probs (torch.Tensor): :obj:`[K, ...]`, the matching
            :math:`\log P(m^{(k)})`, e.g. :obj:`out.log_prob` summed per graph.

    Returns the mean over the samples (and any trailing dims, summed).
    """
    k = losses.size(0)
    if k < 2:
        raise ValueError("the leave-one-out baseline needs at least 2 samples")
    baseline = (losses.sum(0, keepdim=True) - losses) / (k - 1)
    advantage = (losses - baseline).detach()
    return (losses + advantage * log_probs).mean(0).sum()
