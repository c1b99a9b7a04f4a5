r"""The structural loss: a batched, differentiable graph-edit-distance surrogate.

For a predicted graph :math:`G` (``n`` nodes, masses :math:`a_i \ge 0`, soft edges
:math:`A_{ik} \in [0, 1]`) and a target :math:`H` (``m`` nodes, masses :math:`b_j`, edges
:math:`B_{jl}`), nodes are matched by a transport plan over the Riesen-Bunke layout with
dummies: rows are the ``n`` predicted nodes plus one insertion row of mass
:math:`\sum_j b_j`, columns the ``m`` target nodes plus one deletion column of mass
:math:`\sum_i a_i`, and the cost is

.. math::
    \tilde C = \begin{pmatrix} C^{\mathrm{sub}} & c_{\mathrm{del}} \mathbf 1 \\
    c_{\mathrm{ins}} \mathbf 1^\top & 0 \end{pmatrix}, \qquad c_{\mathrm{ins}} =
    c_{\mathrm{del}} = 1 .

A node of mass 0.6 is 0.6 of a node: the rest of it is deleted. Dummies have no edges,
so an edge whose endpoint is deleted or inserted is present on one side only. The loss
of a pair is the value of a fused Gromov-Wasserstein problem (Vayer et al. 2019) with
a relative-entropy regulariser:

.. math::
    \mathcal L(G, H) = \min_{P \in \Pi(\tilde a, \tilde b)}
        \alpha \langle P, \tilde C\rangle
        + \beta \sum_{ijkl} \ell(A_{ik}, B_{jl}) P_{ij} P_{kl}
        + \varepsilon \sum_{ij} P_{ij} \log \frac{P_{ij}}{R_{ij}}
    \;+\; \gamma\, \mathrm{clique}(G, H),

with :math:`\ell(x, y) = x + y - 2xy` (``edge_loss="l1"``: :math:`|x - y|` when either
side is 0/1, the expected number of disagreeing edges for independent Bernoulli edges)
or :math:`(x - y)^2` (``"square"``), the sums running over both graphs' nodes and
dummies (an edge present on one side only costs 1, counted once per directed edge).
The reference measure :math:`R = (a \oplus 1)(b \oplus 1)^\top` with the
dummy-dummy cell set to :math:`\rho = \min(\sum a, \sum b)` makes the regulariser exactly
0 on any hard (0/1) alignment of unit nodes that matches :math:`\min(n, m)` pairs (the
plain entropy would add :math:`\varepsilon\, k \log k` for the :math:`k` matched pairs
in the dummy-dummy cell), so a graph scores ~0 against itself and,
with 0/1 labels, ``alpha=1, beta=1, gamma=0``, the value approximates the graph edit
distance with unit costs (node substitution, insertion, deletion, edge insertion,
deletion). Only the dummy-dummy cell of :math:`R` changes the plan (a cost shift of
:math:`-\varepsilon\log\rho`); the rest changes the value by
:math:`-\varepsilon(\sum a\log a + \sum b \log b)`.

The value is minimised by the functional solver :func:`~pyg_grapheme.loss.fgw._solve_fgw`
(annealed, then run to a stationary point); the pieces live one module each:

- :mod:`~pyg_grapheme.loss.inputs`: reading and validating the two batches, padding,
  reductions;
- :mod:`~pyg_grapheme.loss.costs`: :math:`C^{\mathrm{sub}}` and the dummy layout;
- :mod:`~pyg_grapheme.loss.quadratic`: :math:`Q` and :math:`\nabla Q` from the edge lists
  as block-sparse products, :math:`O(E_G\, m + E_H\, n)`, no dense adjacency;
- :mod:`~pyg_grapheme.loss.fgw`: the batched entropic FGW solver;
- :mod:`~pyg_grapheme.loss.clique`: the :math:`O(n + E)` density term.

**Gradient.** Envelope theorem at the final plan :math:`P^\ast` (held fixed): the value
is recomputed from the detached plan, so autograd gives
:math:`\alpha P^\ast \partial\tilde C/\partial x` and
:math:`\beta\,\partial Q(P^\ast)/\partial A`; the node masses, which are marginals, get
:math:`\partial\mathcal L/\partial a_i = \tilde f_i + g_{\mathrm{del}}` (soft c-transform
of the final potentials, finite also for mass 0) through a term that is 0 in value.
Nothing of the iterations is kept: memory :math:`O(B n m)`. At a stationary point
(:math:`M(P) + \varepsilon \log(P/R) = f \oplus g`) this is the exact derivative of the
loss (the plan's own variation contributes nothing to first order); the solver reaches
one at the defaults (docs/loss.md measures the agreement with finite differences), and
warns where it does not.

References:
    - K. Riesen, H. Bunke, "Approximate graph edit distance computation by means of
      bipartite graph matching", Image and Vision Computing 27(7), 2009.
    - T. Vayer, L. Chapel, R. Flamary, R. Tavenard, N. Courty, "Optimal Transport for
      structured data with application on graphs", ICML 2019.
    - G. Peyre, M. Cuturi, "Computational Optimal Transport", 2019, Sec. 9.1 (the
      envelope gradient).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch_geometric.utils import to_dense_batch

from pyg_grapheme.loss.clique import _clique_term
from pyg_grapheme.loss.costs import (
    _augment_cost,
    _augment_masses,
    _check_node_cost,
    _indel_cost,
    node_cost_matrix,
    order_cost_matrix,
)
from pyg_grapheme.loss.fgw import (
    FGWResult,
    _check_iterations,
    _default_tol,
    _solve_fgw,
    fgw,
)
from pyg_grapheme.loss.inputs import (
    _autocast_off,
    _check_reduction,
    _Dense,
    _dense,
    _read_pair,
    _reduce,
    _Side,
)
from pyg_grapheme.loss.quadratic import _check_edge_loss, _Edges
from pyg_grapheme.loss.sinkhorn import c_transform_cols, c_transform_rows

# fgw, FGWResult and node_cost_matrix are re-exported: they were defined here before
# the loss was split into modules.
__all__ = ["structural_loss", "StructuralLoss", "fgw", "FGWResult", "node_cost_matrix"]


@_autocast_off
def structural_loss(
    pred: Any,
    target: Any,
    *,
    alpha: float = 1.0,
    beta: float = 0.5,
    gamma: float = 2.0,
    reg: float = 0.05,
    reduction: str = "mean",
    return_components: bool = False,
    node_cost: str = "dot",
    edge_loss: str = "l1",
    outer_iter: int = 10,
    reg_init: float | None = 1.0,
    anneal_iter: int | None = None,
    inner_iter: int = 20,
    max_iter: int = 500,
    max_outer: int = 30,
    tol: float | None = None,
    outer_tol: float | None = None,
    method: str = "stabilized",
    indel_cost: float | None = None,
    integral_mass: bool = False,
    order_weight: float = 0.0,
) -> Tensor | tuple[Tensor, dict[str, Any]]:
    r"""Structural loss between a batch of predicted graphs and a batch of targets.

    .. math::
        \mathcal L = \alpha\,\mathrm{node} + \beta\,\mathrm{edge}
            + \gamma\,\mathrm{clique} + \mathrm{reg}

    per pair (see the module docstring for the definitions); graph ``i`` of ``pred`` is
    compared with graph ``i`` of ``target``.

    Args:
        pred, target: PyG ``Batch``-like objects with ``x`` ``[N, D]`` or ``[N, S, K]``
            (same trailing shape on both sides), ``edge_index`` ``[2, E]``, optional
            ``edge_weight`` ``[E]`` in [0, 1], optional ``node_weight`` ``[N]`` >= 0, and
            ``batch`` ``[N]`` (sorted; absent = one graph) with ``num_graphs``. Inputs
            in bfloat16/float16 are computed in float32; float64 is kept. Autocast is
            disabled inside (``bf16-mixed`` would run the solver in 16 bits). NaN/Inf in
            ``x`` or ``node_weight`` (or ``edge_weight`` outside [0, 1]) raise
            ``ValueError`` naming the side and field.
        alpha, beta, gamma: weights of the node, edge and clique terms.
        reg: entropic regularisation :math:`\varepsilon` of the final alignment.
        reduction: ``"mean"`` | ``"sum"`` | ``"none"`` (one value per pair, ``[B]``).
        return_components: also return a dict (below).
        node_cost: ``"dot"`` (default), ``"sqeuclidean"``, ``"tv"`` or ``"nll"``; see
            :func:`node_cost_matrix`.
        edge_loss: ``"l1"`` (:math:`x + y - 2xy`, default) or ``"square"``.
        outer_iter: sets the annealing phase: ``outer_iter // 2`` linearisation steps
            with decreasing :math:`\varepsilon` (ignored when there are no edges,
            ``beta == 0`` or ``reg_init=None``).
        reg_init, anneal_iter: :math:`\varepsilon` decays geometrically from ``reg_init``
            to ``reg`` over ``anneal_iter`` steps (default ``outer_iter // 2``);
            ``reg_init=None`` disables annealing.
        inner_iter: Sinkhorn iterations at most of each annealing step.
        max_iter: Sinkhorn iterations at most of the final solve (stationary-phase steps:
            ``max(inner_iter, max_iter // 5)``, warm-started).
        max_outer: steps at most of the stationary phase at ``reg`` (see
            :func:`~pyg_grapheme.loss.fgw._solve_fgw`); a pair that reaches neither
            ``outer_tol`` nor progress stops earlier.
        tol: Sinkhorn tolerance on the L1 marginal violation relative to the pair's
            total mass :math:`\sum a + \sum b`; default 1e-11 in float64, 1e-4 in float32.
        outer_tol: stationarity tolerance: the plan change of an undamped step and the
            objective change, both relative to the mass; default 1e-9 in float64, 1e-4
            in float32. Where the solve converges the gradient is that of the loss
            itself; a solve that does not converge within ``max_outer`` / ``max_iter``
            warns once per call (``RuntimeWarning``, naming the worst pair and its
            residual) and its gradient is that of the returned plan (finite, not exact).
        method: ``"stabilized"`` or ``"log"`` Sinkhorn.
        indel_cost: cost of inserting or deleting a node; default 1 (unit-cost GED), and
            :math:`\log K` (the NLL of a uniform prediction over ``K`` classes) for
            ``node_cost="nll"``.
        integral_mass: compare the *hard* predicted graph's nodes: the forward pass
            rounds ``pred.node_weight`` to the nearest integer (a keep probability
            :math:`k_i` becomes 1 when :math:`k_i > 0.5`, else 0), the backward pass is
            the straight-through estimator (Bengio et al. 2013),
            :math:`\partial\mathcal L/\partial a_i :=
            \partial\mathcal L/\partial a_i|_{a = \mathrm{round}(a)}`. Default
            ``False`` (fractional masses: transport lets three nodes of mass 1/3 stand
            for one target node at cost 0, though at ``keep > 0.5`` none of them exists;
            with ``True`` that prediction costs the node's deletion and its edges, the
            GED of the hard graph; docs/loss.md, "Integral masses").

        order_weight: weight :math:`\lambda` of a positional term added to the
            substitution cost, :math:`C^{\mathrm{sub}}_{ij} + \lambda \ell_{ij}` with
            :math:`\ell` the normalised distance from the alignment's diagonal in node
            order (:func:`~pyg_grapheme.loss.costs.order_cost_matrix`, Su and Hua 2017).
            For graphs whose node order is meaningful (text chains in reading order):
            without it a prediction with the right graphemes in the wrong order aligns by
            content and gets no gradient towards the right order. Default ``0`` (off: the
            loss is the GED surrogate, invariant to node order).

    Returns:
        The loss (scalar, or ``[B]`` for ``reduction="none"``); with
        ``return_components=True`` a tuple ``(loss, components)`` where ``components``
        holds detached per-pair tensors ``node`` (:math:`\langle P,\tilde C\rangle`),
        ``edge`` (:math:`Q(P)`), ``clique``, ``reg`` (the regulariser, ~0 for sharp
        plans), each ``[B]``, and the alignment: ``plan`` ``[B, n+1, m+1]`` (row ``n`` is
        the insertion dummy, column ``m`` the deletion dummy, ``n``/``m`` the largest
        graph sizes; predicted node ``i`` of graph ``k`` is row ``i`` in batch order),
        ``row_mask`` ``[B, n+1]`` and ``col_mask`` ``[B, m+1]`` (present rows/columns),
        ``outer_iter`` (linearisation steps run), ``marginal_err`` ``[B]`` (relative to
        the mass), ``residual`` ``[B]`` (stationarity, see ``outer_tol``), and
        ``plan_cross_entropy``, a function ``(logits, target_x) -> scalar``: the
        cross-entropy of the predicted nodes' logits (``[N, S, K]`` or ``[N, D]``, in
        ``pred`` order) against the target rows they are matched to, weighted by the
        detached plan, per matched unit of mass, mean over pairs (a bounded OT cost
        builds the plan, the cross-entropy trains the head on it).
    """
    _check_options(alpha, beta, gamma, reg, reduction, node_cost, edge_loss)
    _check_iterations(outer_iter=outer_iter, anneal_iter=anneal_iter, inner_iter=inner_iter,
                      max_iter=max_iter, max_outer=max_outer)
    if not order_weight >= 0:
        raise ValueError(f"order_weight must be >= 0, got {order_weight}")
    ps, ts = _read_pair(pred, target)
    if integral_mass and ps.node_weight is not None:
        ps.node_weight = _round_straight_through(ps.node_weight)
    B = ps.num_graphs
    p, t = _dense(ps), _dense(ts)
    dtype = p.mass.dtype
    n, m = p.n, t.n

    # The alignment problem: augmented cost (autograd through the features), marginals.
    Csub = node_cost_matrix(p.x, t.x, node_cost)
    if order_weight > 0:
        order = order_cost_matrix(torch.bincount(ps.batch, minlength=B),
                                  torch.bincount(ts.batch, minlength=B), n, m)
        Csub = Csub + order_weight * order.to(Csub.dtype)
    Ct = _augment_cost(Csub, _indel_cost(indel_cost, node_cost, p.x.size(-1)))
    A, Bm, log_rho = _augment_masses(p.mass, t.mass)
    edges = _Edges(p, t, B, edge_loss, dtype)
    use_edges = beta > 0 and not edges.empty
    A_d, B_d = A.detach(), Bm.detach()
    with torch.no_grad():  # called from here: its warning's stacklevel counts on it
        sol = _solve_fgw(
            alpha * Ct.detach(), edges if use_edges else None, beta, A_d, B_d,
            log_rho.detach(), reg, n, m, outer_iter=outer_iter, reg_init=reg_init,
            anneal_iter=anneal_iter, inner_iter=inner_iter, max_iter=max_iter,
            max_outer=max_outer, tol=_default_tol(tol, dtype, "tol"),
            outer_tol=_default_tol(outer_tol, dtype, "outer_tol"), method=method,
        )
    P = sol.plan
    row_ok, col_ok = A_d > 0, B_d > 0

    # The value at the fixed plan; autograd then gives the envelope gradient.
    node = (P * Ct).sum((1, 2))
    edge = P.new_zeros(B) if edges.empty else edges.value(P)
    reg_term = _regulariser(P, p, t, log_rho, reg)
    total = alpha * node + beta * edge + reg_term
    ga, gb = _mass_gradients(sol, row_ok, col_ok, reg, n, m)
    total = total + _zero_with_gradient(ga, p.mass)
    total = total + _zero_with_gradient(gb, t.mass)
    if gamma > 0:
        clique = _clique_term(ps, ts)
        total = total + gamma * clique
    else:
        clique = P.new_zeros(B)
    loss = _reduce(total, reduction)
    if not return_components:
        return loss
    return loss, {
        "node": node.detach(),
        "edge": edge.detach(),
        "clique": clique.detach(),
        "reg": reg_term.detach(),
        "plan": P,
        "row_mask": row_ok,
        "col_mask": col_ok,
        "outer_iter": sol.outer_iter,
        "marginal_err": sol.marginal_err,
        "residual": sol.residual,
        "plan_cross_entropy": _plan_cross_entropy(P, ps, ts, n, m),
    }


#: The solver's iteration counts (checked by ``_check_iterations``).
_ITERATIONS = ("outer_iter", "anneal_iter", "inner_iter", "max_iter", "max_outer")


def _check_options(alpha: float, beta: float, gamma: float, reg: float, reduction: str,
                   node_cost: str, edge_loss: str) -> None:
    _check_reduction(reduction)
    _check_edge_loss(edge_loss)
    _check_node_cost(node_cost)
    if reg <= 0:
        raise ValueError(f"reg must be > 0, got {reg}")
    if min(alpha, beta, gamma) < 0:
        raise ValueError("alpha, beta and gamma must be >= 0")


def _round_straight_through(a: Tensor) -> Tensor:
    """``round(a)`` in value (halves to even: 0.5 -> 0), the identity's gradient."""
    return a + (torch.round(a) - a).detach()


def _regulariser(P: Tensor, p: _Dense, t: _Dense, log_rho: Tensor, reg: float) -> Tensor:
    r""":math:`\varepsilon \sum P \log(P / R)` per pair, ``[B]``, at the fixed plan.

    :math:`\log R_{ij} = \log a_i + \log b_j` off the dummy-dummy cell, so the sum is
    :math:`\sum P\log P - \sum a\log a - \sum b\log b - P_{nm}\log\rho` (the marginals of
    ``P`` are ``a`` and ``b``). Only :math:`\log\rho` carries a gradient (to the masses).
    """
    n, m = p.n, t.n
    with torch.no_grad():
        ent = (
            torch.xlogy(P, P).sum((1, 2))
            - torch.xlogy(p.mass, p.mass).sum(1)
            - torch.xlogy(t.mass, t.mass).sum(1)
        ).detach()
    return reg * (ent - P[:, n, m] * log_rho)


@torch.no_grad()
def _mass_gradients(sol: FGWResult, row_ok: Tensor, col_ok: Tensor, reg: float, n: int,
                    m: int) -> tuple[Tensor, Tensor]:
    r"""The envelope gradient w.r.t. the node masses, ``[B, n]`` and ``[B, m]``.

    A predicted mass :math:`a_i` enters row :math:`i` and the deletion column (whose mass
    is :math:`\sum a`): :math:`\partial\mathcal L/\partial a_i = \tilde f_i + g_{\mathrm{del}}`
    with :math:`\tilde f` the soft c-transform of the final potentials, finite also for
    rows of mass 0 (where :math:`f` itself is undefined); the target side likewise.
    """
    f, g, M = sol.f, sol.g, sol.cost
    f_t = c_transform_rows(g, M, reg, col_ok)
    g_t = c_transform_cols(f, M, reg, row_ok)
    log_tiny = reg * math.log(torch.finfo(M.dtype).tiny)
    g_del = torch.where(col_ok[:, m], g[:, m], log_tiny + g_t[:, m])
    f_ins = torch.where(row_ok[:, n], f[:, n], log_tiny + f_t[:, n])
    return f_t[:, :n] + g_del.unsqueeze(1), g_t[:, :m] + f_ins.unsqueeze(1)


def _zero_with_gradient(grad: Tensor, mass: Tensor) -> Tensor:
    """``[B]`` zeros whose gradient w.r.t. ``mass`` is ``grad``."""
    return (grad * (mass - mass.detach())).sum(1)


def _plan_cross_entropy(
    P: Tensor, ps: _Side, ts: _Side, n: int, m: int
) -> Callable[..., Tensor]:
    """A closure ``(logits, target_x) -> scalar``: the cross-entropy of the predicted
    nodes' logits against the target nodes they are matched to, weighted by the (detached)
    plan, per matched unit of mass, mean over pairs (``reduction="none"``: per pair)."""
    plan = P[:, :n, :m]
    B = P.size(0)

    def plan_cross_entropy(logits: Tensor, target_x: Tensor, reduction: str = "mean") -> Tensor:
        dtype = plan.dtype
        logp = torch.log_softmax(logits.to(dtype), dim=-1)
        slots = logp.size(1) if logp.dim() == 3 else 1
        Lp = to_dense_batch(logp.flatten(1), ps.batch, batch_size=B, max_num_nodes=n)[0]
        Qt = target_x.to(dtype).flatten(1)
        Qt = to_dense_batch(Qt, ts.batch, batch_size=B, max_num_nodes=m)[0]
        ce = -(Lp @ Qt.transpose(1, 2)) / slots  # [B, n, m]
        mass = plan.sum((1, 2))
        per_pair = (plan * ce).sum((1, 2)) / mass.clamp_min(torch.finfo(dtype).tiny)
        if reduction == "none":
            return per_pair
        return per_pair.mean() if B else per_pair.sum()

    return plan_cross_entropy


def _check_module_options(alpha: float, beta: float, gamma: float, reg: float,
                          reduction: str, options: dict[str, Any]) -> None:
    """:class:`StructuralLoss`'s options, as :func:`structural_loss` would check them."""
    known = inspect.signature(structural_loss).parameters
    unknown = sorted(set(options) - set(known) - {"pred", "target", "return_components"})
    if unknown:
        raise TypeError(f"StructuralLoss: unknown option(s) {unknown}; the options are "
                        f"structural_loss's: {', '.join(list(known)[2:])}")
    chosen = {k: options.get(k, known[k].default) for k in ("node_cost", "edge_loss")}
    _check_options(alpha, beta, gamma, reg, reduction, chosen["node_cost"], chosen["edge_loss"])
    _check_iterations(**{k: options[k] for k in _ITERATIONS if k in options})


class StructuralLoss(nn.Module):
    r"""Module form of :func:`structural_loss` (same options, fixed at construction).

    .. math::
        \mathcal L = \alpha\,\mathrm{node} + \beta\,\mathrm{edge}
            + \gamma\,\mathrm{clique} + \mathrm{reg}

    Example::

        loss_fn = StructuralLoss(alpha=1.0, beta=0.5, gamma=2.0)
        loss = loss_fn(pred_batch, target_batch)
    """

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 0.5,
        gamma: float = 2.0,
        reg: float = 0.05,
        reduction: str = "mean",
        **kwargs: Any,
    ) -> None:
        super().__init__()
        # Checked here, so a bad option in a YAML fails when the module is built, not at
        # the first batch.
        _check_module_options(alpha, beta, gamma, reg, reduction, kwargs)
        self.alpha, self.beta, self.gamma, self.reg = alpha, beta, gamma, reg
        self.reduction = reduction
        self.kwargs = kwargs

    def forward(
        self, pred: Any, target: Any, return_components: bool = False
    ) -> Tensor | tuple[Tensor, dict[str, Any]]:
        return structural_loss(
            pred, target, alpha=self.alpha, beta=self.beta, gamma=self.gamma, reg=self.reg,
            reduction=self.reduction, return_components=return_components, **self.kwargs,
        )

    def extra_repr(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.kwargs.items())
        return (
            f"alpha={self.alpha}, beta={self.beta}, gamma={self.gamma}, reg={self.reg}, "
            f"reduction={self.reduction!r}{extra}"
        )
