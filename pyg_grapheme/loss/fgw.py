r"""A functional, batched entropic fused Gromov-Wasserstein (FGW) solver.

It minimises, for each problem of a padded batch,

.. math::
    \min_{P \in \Pi(a, b)} \langle P, M_0\rangle + \beta\, Q(P)
        + \varepsilon \sum_{ij} P_{ij} \log \frac{P_{ij}}{R_{ij}}

(:math:`Q` the quadratic edge term of :mod:`pyg_grapheme.loss.quadratic`, :math:`R` a
reference measure that only shifts one cell of the cost) by mirror descent / successive
linearisation (Peyre et al. 2016, POT's ``entropic_fused_gromov_wasserstein`` with
``solver="PGD"``): at the current plan :math:`P_t`, linearise the quadratic term and
solve

.. math::
    P_{t+1} = \operatorname{Sinkhorn}_{\varepsilon_t}\big(M_0 + \beta \nabla Q(P_t)\big),

warm-starting the potentials, with :math:`\varepsilon_t` annealed geometrically from
``reg_init`` down to ``reg`` (fewer poor local optima). At ``reg`` the iteration is then
run to a *stationary point* (plan and objective change below ``outer_tol``): plain steps
where they contract, KL-proximal steps (Xu et al. 2019) with a per-pair weight
:math:`\lambda` estimated from the last two steps where they oscillate (the plain
iteration's dominant eigenvalue :math:`\mu < 0`; :math:`\lambda = -\varepsilon\mu`
cancels it to first order). See :func:`_solve_fgw`. Every pair of the batch is solved at
once; converged pairs leave the batch. Nothing is differentiated: the value's gradient is
given by the returned plan and potentials (envelope theorem), which is exact at the
stationary point the solver reaches.

:func:`fgw` is the solver on dense inputs; :func:`~pyg_grapheme.loss.structural_loss`
calls :func:`_solve_fgw` with the sparse edge term of two PyG batches.

References:
    - G. Peyre, M. Cuturi, J. Solomon, "Gromov-Wasserstein averaging of kernel and
      distance matrices", ICML 2016.
    - T. Vayer, L. Chapel, R. Flamary, R. Tavenard, N. Courty, "Optimal Transport for
      structured data with application on graphs", ICML 2019.
    - H. Xu, D. Luo, H. Zha, L. Carin, "Gromov-Wasserstein learning for graph matching
      and node embedding", ICML 2019 (the proximal point steps).
    - B. Schmitzer, "Stabilized sparse scaling algorithms for entropy regularized
      transport problems", SIAM J. Sci. Comput. 2019 (the Sinkhorn solver).
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import torch
from torch import Tensor

from pyg_grapheme.loss.quadratic import _check_edge_loss, _DenseEdges, _Quadratic
from pyg_grapheme.loss.sinkhorn import solve

__all__ = ["fgw", "FGWResult"]


def _schedule(t: int, reg: float, reg_init: float | None, anneal: int) -> float:
    if reg_init is None or reg_init <= reg or anneal <= 0 or t >= anneal:
        return reg
    return reg_init * (reg / reg_init) ** (t / anneal)



#: Steps without halving the residual or lowering the objective after which a pair of
#: the stationary phase counts as stalled.
_PATIENCE = 8
#: Largest proximal weight, in units of reg (beyond it a step barely moves).
_LAM_MAX = 16.0
#: Default tolerances by dtype: (Sinkhorn marginal tol, outer stationarity tol), both
#: relative to the pair's total mass. float64 goes tight cheaply (warm starts); float32
#: keeps the old Sinkhorn tolerance (its rounding limits the gradient to ~1e-4 anyway).
_TOLS = {torch.float64: (1e-11, 1e-9), torch.float32: (1e-4, 1e-4)}


def _default_tol(value: float | None, dtype: torch.dtype, which: str) -> float:
    if value is not None:
        return float(value)
    tols = _TOLS.get(dtype, _TOLS[torch.float32])
    return tols[0] if which == "tol" else tols[1]


class FGWResult(NamedTuple):
    """Result of the batched entropic FGW solve (all tensors detached).

    Attributes:
        plan: ``[B, R, C]`` the plan :math:`P^\\ast` (0 on absent rows/columns).
        f, g: ``[B, R]``, ``[B, C]`` potentials of the final linearised problem:
            :math:`P^\\ast_{ij} = \\exp((f_i + g_j - M_{ij}) / \\varepsilon)`.
        cost: ``[B, R, C]`` that linearised cost :math:`M = M_0 + \\beta \\nabla Q(P)`
            (including the dummy-dummy shift :math:`-\\varepsilon \\log\\rho`).
        outer_iter: linearisation steps run (annealing + stationary phase + final).
        residual: ``[B]`` stationarity residual, the L1 change of the plan in the final
            (undamped) step relative to the pair's mass; 0 at a stationary point.
        marginal_err: ``[B]`` L1 row-marginal violation of the final Sinkhorn solve,
            relative to the pair's mass.
    """

    plan: Tensor
    f: Tensor
    g: Tensor
    cost: Tensor
    outer_iter: int
    residual: Tensor
    marginal_err: Tensor

    @property
    def potentials(self) -> tuple[Tensor, Tensor]:
        """``(f, g)``: the dual potentials, the value's gradient w.r.t. the masses."""
        return self.f, self.g

    @property
    def iterations(self) -> int:
        """Linearisation steps run (``outer_iter``)."""
        return self.outer_iter


def _solve_fgw(
    M0: Tensor,
    edges: _Quadratic | None,
    beta: float,
    a: Tensor,
    b: Tensor,
    log_rho: Tensor,
    reg: float,
    n: int,
    m: int,
    *,
    outer_iter: int,
    reg_init: float | None,
    anneal_iter: int | None,
    inner_iter: int,
    max_iter: int,
    max_outer: int,
    tol: float,
    outer_tol: float,
    method: str,
) -> FGWResult:
    r"""Entropic FGW to a stationary point, batched, without autograd.

    Minimises :math:`\langle P, M_0\rangle + \beta Q(P) + \varepsilon \sum P\log(P/R)`
    over :math:`\Pi(a, b)` (``M0`` already holds :math:`\alpha\tilde C`; the reference
    measure enters as the dummy-dummy shift :math:`-\varepsilon\log\rho` at cell
    ``[n, m]``).

    1. *Annealing* (only with edges): ``anneal_iter`` (default ``outer_iter // 2``)
       linearisation steps :math:`P \leftarrow \mathrm{Sinkhorn}_{\varepsilon_t}(M_0 +
       \beta\nabla Q(P))`, :math:`\varepsilon_t` geometric from ``reg_init`` to ``reg``,
       ``inner_iter`` Sinkhorn iterations each (warm-started).
    2. *Stationary phase* at :math:`\varepsilon` = ``reg``: proximal-point steps (Xu,
       Luo, Zha, Carin 2019, "Gromov-Wasserstein learning for graph matching and node
       embedding", ICML 2019; a KL-proximal / mirror-descent step on the FGW objective)

       .. math::
           P_{t+1} = \arg\min_{P\in\Pi(a,b)} \langle P, M(P_t)\rangle
               + \varepsilon\,\mathrm{KL}(P\,|\,R) + \lambda\,\mathrm{KL}(P\,|\,P_t),

       i.e. Sinkhorn at :math:`\varepsilon` on
       :math:`\frac{\varepsilon}{\varepsilon+\lambda}(M(P_t) - \lambda \log P_t)`, with
       a per-pair :math:`\lambda` set from the last two steps :math:`d_{t-1}, d_t`: if
       they are (anti-)parallel (:math:`|\cos| > 0.5`), :math:`\nu = \pm|d_t|/|d_{t-1}|`
       estimates the damped map's dominant eigenvalue, :math:`\mu = (\nu(\varepsilon +
       \lambda) - \lambda)/\varepsilon` the plain one, and :math:`\lambda =
       \mathrm{clip}(-\varepsilon\mu, 0, 16\varepsilon)` cancels an oscillating mode
       (:math:`\mu < 0`, the usual failure of the plain iteration at small
       :math:`\varepsilon`) to first order; a monotone one gets :math:`\lambda = 0`.
       Every fixed point satisfies the first-order condition
       :math:`M(P) + \varepsilon\log(P/R) = f \oplus g` of the regularised objective,
       where the envelope gradient is exact. A pair is done when its undamped-equivalent
       plan change and its objective change (both relative to its mass) are <=
       ``outer_tol``, and stops as *stalled* when it has neither halved its residual nor
       lowered its objective for 8 steps; converged and stalled pairs leave the batch.
       At most ``max_outer`` steps. Inner solves are inexact while far from the fixed
       point (tolerance ``0.1 x`` the shortest open step, not below ``tol``; at most
       ``max(inner_iter, max_iter // 5)`` iterations, warm-started).
    3. *Final step*: one undamped Sinkhorn solve of :math:`M(P)` to ``tol``; its
       potentials give the marginals' gradient and its plan change is the residual.

    Memory is :math:`O(BRC)` whatever the number of steps. Warns once (per call) if a
    pair ends above 10x ``outer_tol`` / ``tol``, naming the worst pair and its residual.
    """
    problem = _Problem(M0, edges, beta, a, b, log_rho, n, m)
    # The product of the marginals (divided by the mass) starts every pair.
    P = a.unsqueeze(2) * b.unsqueeze(1) / problem.Sv
    f: Tensor | None = None
    g: Tensor | None = None
    steps = 0
    if edges is not None:
        anneal = max(1, outer_iter) // 2 if anneal_iter is None else anneal_iter
        anneal = 0 if reg_init is None or reg_init <= reg else max(0, anneal)
        for t in range(anneal):
            eps = _schedule(t, reg, reg_init, anneal)
            M, _ = problem.linearise(P, eps)
            f, g, P, _, _ = solve(M, a, b, eps, init=None if f is None or g is None else (f, g),
                                  max_iter=inner_iter, tol=tol, method=method)
            steps += 1
        P, f, g, k = _stationary_phase(problem, P, f, g, reg, inner_iter=inner_iter,
                                       max_iter=max_iter, max_outer=max_outer, tol=tol,
                                       outer_tol=outer_tol, method=method)
        steps += k
    # Final step: an undamped solve of the linearisation at P, to ``tol``.
    M, _ = problem.linearise(P, reg)
    f, g, P_new, _, err = solve(M, a, b, reg, init=None if f is None or g is None else (f, g),
                                max_iter=max_iter, tol=tol, method=method)
    S = problem.S
    residual = (P_new - P).abs().sum((1, 2)) / S if edges is not None else torch.zeros_like(S)
    err = err / S
    steps += 1
    _warn_if_unconverged(residual, err, outer_tol, tol)
    return FGWResult(P_new, f, g, M, steps, residual, err)


class _Problem:
    """One batch of FGW problems: the fixed data of :func:`_solve_fgw` and what is
    derived from it, restricted to a subset of pairs by :meth:`subset`."""

    def __init__(self, M0: Tensor, edges: _Quadratic | None, beta: float, a: Tensor,
                 b: Tensor, log_rho: Tensor, n: int, m: int) -> None:
        self.M0, self.edges, self.beta = M0, edges, beta
        self.a, self.b, self.log_rho, self.n, self.m = a, b, log_rho, n, m
        self.S = a.sum(1).clamp_min(torch.finfo(M0.dtype).tiny)  # [B] mass of each pair
        self.Sv = self.S.view(-1, 1, 1)
        self.cell_ok = (a > 0).unsqueeze(2) & (b > 0).unsqueeze(1)

    def subset(self, keep: Tensor) -> _Problem:
        out = _Problem.__new__(_Problem)
        out.M0, out.beta, out.n, out.m = self.M0[keep], self.beta, self.n, self.m
        out.edges = None if self.edges is None else self.edges.subset(keep)
        out.a, out.b, out.log_rho = self.a[keep], self.b[keep], self.log_rho[keep]
        out.S, out.Sv, out.cell_ok = self.S[keep], self.Sv[keep], self.cell_ok[keep]
        return out

    def linearise(self, P: Tensor, eps: float) -> tuple[Tensor, Tensor]:
        """``M(P)`` with the dd shift at ``eps``, and ``<P, M0 + beta grad Q / 2>``
        (the unregularised objective: Q is a homogeneous quadratic)."""
        M0, n, m = self.M0, self.n, self.m
        M = M0.clone() if self.edges is None else M0 + self.beta * self.edges.grad(P)
        obj = (P * M0).sum((1, 2))
        if self.edges is not None:
            obj = 0.5 * (obj + (P * M).sum((1, 2)))
        M[:, n, m] = M[:, n, m] - eps * self.log_rho
        return M, obj

    def objective(self, P: Tensor, obj: Tensor, reg: float) -> Tensor:
        """The regularised objective from the unregularised one ``obj``."""
        return obj + reg * (torch.xlogy(P, P).sum((1, 2)) - P[:, self.n, self.m] * self.log_rho)


def _stationary_phase(
    problem: _Problem,
    P: Tensor,
    f: Tensor | None,
    g: Tensor | None,
    reg: float,
    *,
    inner_iter: int,
    max_iter: int,
    max_outer: int,
    tol: float,
    outer_tol: float,
    method: str,
) -> tuple[Tensor, Tensor, Tensor, int]:
    """Step 2 of :func:`_solve_fgw`: ``(P, f, g, steps)``."""
    B = P.size(0)
    dev, dtype = P.device, P.dtype
    tiny = torch.finfo(dtype).tiny
    steps = 0
    lam = torch.zeros(B, dtype=dtype, device=dev)
    lam_max = _LAM_MAX * reg  # beyond this a step barely moves; the cap warns instead
    inner_tol = max(tol, 1e-3)
    # Stationary-phase solves are warm-started and need not be exact far from the
    # fixed point: a fifth of the final solve's cap (same convergence, less time:
    # docs/loss.md).
    step_iter = max(inner_iter, max_iter // 5)
    err_in = torch.zeros_like(lam)
    res = torch.full_like(lam, math.inf)
    obj_prev = None
    best = torch.full_like(lam, math.inf)
    since = torch.zeros(B, dtype=torch.long, device=dev)
    act = torch.ones(B, dtype=torch.bool, device=dev)  # pairs still iterated
    d_prev: Tensor | None = None
    # The working set (global indices gidx) shrinks as pairs converge.
    gidx = torch.arange(B, device=dev)
    if f is None:
        f, g = torch.zeros_like(problem.a), torch.zeros_like(problem.b)
    assert g is not None
    P_out, f_out, g_out = P, f, g
    for _ in range(max_outer):
        M, obj = problem.linearise(P, reg)
        obj = problem.objective(P, obj, reg)
        if obj_prev is not None:
            d_obj = (obj - obj_prev).abs() / problem.S
            done_ = (res <= outer_tol) & (d_obj <= outer_tol)
            # A pair that neither halved its residual nor lowered its objective
            # (by more than outer_tol) within _PATIENCE steps has stalled (a cycle or
            # a plateau): it stops taking steps and is reported by the warning. A
            # pair leaving a saddle (residual growing, objective falling) goes on.
            improved = res < 0.5 * best
            best = torch.where(improved, res, best)
            descent = obj < obj_prev - outer_tol * problem.S
            since = torch.where(improved | descent, 0, since + 1)
            act = act & ~done_ & (since < _PATIENCE)
            if not bool(act.any()):
                break
            if 4 * int(act.sum()) <= 3 * act.numel():
                # A quarter of the working set has left: shrink it, edges included
                # (grad Q and every per-pair op then run on the active pairs only).
                assert d_prev is not None
                keep, gone = act, ~act
                P_out = P_out.index_copy(0, gidx[gone], P[gone])
                f_out = f_out.index_copy(0, gidx[gone], f[gone])
                g_out = g_out.index_copy(0, gidx[gone], g[gone])
                gidx = gidx[keep]
                problem = problem.subset(keep)
                P, f, g, M, obj = P[keep], f[keep], g[keep], M[keep], obj[keep]
                lam, res, best, since = lam[keep], res[keep], best[keep], since[keep]
                err_in, d_prev, act = err_in[keep], d_prev[keep], act[keep]
        obj_prev = obj
        # Only the active pairs are solved (converged ones drop out of the batch).
        idx = act.nonzero().squeeze(1)
        Pi, Mi, lam_i = P[idx], M[idx], lam[idx]
        S_i = problem.S[idx]
        scale = (reg / (reg + lam_i)).view(-1, 1, 1)
        if bool((lam_i > 0).any()):
            logP = torch.where(problem.cell_ok[idx], Pi.clamp_min(tiny).log(), 0.0)
            M_eff = scale * (Mi - lam_i.view(-1, 1, 1) * logP)
        else:
            M_eff = Mi
        init = (f[idx] * scale[:, :, 0], g[idx] * scale[:, 0])
        fr, gr, P_new, _, e_i = solve(M_eff, problem.a[idx], problem.b[idx], reg, init=init,
                                      max_iter=step_iter, tol=inner_tol, method=method)
        dif = P_new - Pi
        raw = dif.abs().sum((1, 2)) / S_i
        # Adaptive proximal weight from the last two steps of each pair: successive
        # steps nu = +-|d_t| / |d_t-1| estimate the damped map's dominant eigenvalue,
        # mu = (nu (eps + lam) - lam) / eps the plain one; lam = -eps mu cancels an
        # oscillating mode (mu < 0) to first order; a monotone one needs none.
        dn = dif.flatten(1).norm(dim=1)
        if d_prev is not None:
            dp = d_prev[idx]
            pn = dp.flatten(1).norm(dim=1)
            cos = (dif * dp).sum((1, 2)) / (dn * pn).clamp_min(tiny)
            nu = torch.sign(cos) * dn / pn.clamp_min(tiny)
            mu = (nu * (reg + lam_i) - lam_i) / reg
            new_lam = torch.clamp(-reg * mu, min=0.0, max=lam_max)
            lam = lam.index_copy(0, idx, torch.where(cos.abs() > 0.5, new_lam, lam_i))
            d_prev = d_prev.index_copy(0, idx, dif)
        else:
            d_prev = torch.zeros_like(P).index_copy(0, idx, dif)
        f, g = f.index_copy(0, idx, fr / scale[:, :, 0]), g.index_copy(0, idx, gr / scale[:, 0])
        P = P.index_copy(0, idx, P_new)
        err_in = err_in.index_copy(0, idx, e_i / S_i)
        res = res.index_copy(0, idx, raw / scale.view(-1))  # undamped step, 1st order
        steps += 1
        # Inner solves only as exact as the step is long (inexact proximal point).
        open_ = raw > outer_tol * scale.view(-1)
        if bool(open_.any()):
            inner_tol = max(tol, min(1e-3, 0.1 * float(raw[open_].min())))
    P = P_out.index_copy(0, gidx, P)
    f, g = f_out.index_copy(0, gidx, f), g_out.index_copy(0, gidx, g)
    return P, f, g, steps


def _warn_if_unconverged(residual: Tensor, err: Tensor, outer_tol: float, tol: float) -> None:
    # 10x slack: the last step's own rounding should not warn.
    bad = (residual > 10 * outer_tol) | (err > 10 * tol)
    if bool(bad.any()):
        score = torch.maximum(residual / outer_tol, err / tol)
        k = int(score.argmax())
        warnings.warn(
            f"structural_loss: the FGW solve did not converge for {int(bad.sum())} of "
            f"{bad.numel()} pairs (worst: pair {k}, stationarity residual "
            f"{float(residual[k]):.2e} vs outer_tol {outer_tol:.0e}, marginal error "
            f"{float(err[k]):.2e} vs tol {tol:.0e}); the gradient is that of the returned "
            "plan, not exact. Raise max_outer / max_iter or reg.",
            RuntimeWarning,
            # The caller of structural_loss or fgw: this function, _solve_fgw, the
            # public function and its decorator (_autocast_off, torch.no_grad).
            stacklevel=5,
        )




def _check_iterations(**counts: int | None) -> None:
    """Iteration counts, each an integer: the annealing lengths (``outer_iter``,
    ``anneal_iter``) and ``max_outer`` may be 0 (no annealing, no stationary step), the
    Sinkhorn caps (``inner_iter``, ``max_iter``) are at least 1. ``None``: the default."""
    for name, value in counts.items():
        if value is None:
            continue
        low = 1 if name in ("inner_iter", "max_iter") else 0
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


@torch.no_grad()
def fgw(
    M: Tensor,
    A: Tensor,
    B: Tensor,
    a: Tensor,
    b: Tensor,
    *,
    beta: float = 1.0,
    reg: float = 0.05,
    edge_loss: str = "square",
    outer_iter: int = 10,
    reg_init: float | None = None,
    inner_iter: int = 20,
    max_iter: int = 500,
    max_outer: int = 30,
    tol: float | None = None,
    outer_tol: float | None = None,
    method: str = "stabilized",
) -> FGWResult:
    r"""Batched entropic fused Gromov-Wasserstein on dense inputs, to a stationary point.

    .. math::
        \min_{P \in \Pi(a, b)} \langle P, M\rangle
            + \beta \sum_{ijkl} \ell(A_{ik}, B_{jl}) P_{ij} P_{kl}
            + \varepsilon \sum_{ij} P_{ij} \log P_{ij},

    :math:`\ell(x, y) = (x - y)^2` (``"square"``) or :math:`x + y - 2xy` (``"l1"``), by
    the solver of :func:`~pyg_grapheme.loss.structural_loss` (optional annealing from
    ``reg_init``, then the stationary phase; see :func:`_solve_fgw`). This is POT's
    ``ot.gromov.entropic_fused_gromov_wasserstein(M, A, B, a, b, loss_fun="square_loss",
    epsilon=reg / (1 + beta), alpha=beta / (1 + beta), symmetric=False)`` times
    ``1 + beta``. No autograd (everything returned is detached); the value's gradient
    w.r.t. ``M`` is the plan, w.r.t. the masses the potentials (envelope theorem).

    Args:
        M: ``[B, n, m]`` or ``[n, m]`` linear cost. A: ``[B, n, n]`` and B: ``[B, m, m]``
            (or unbatched) adjacencies / structure matrices. a: ``[B, n]``, b: ``[B, m]``
            masses >= 0 with equal totals per problem (0 = absent row/column).
        beta, reg, edge_loss: weights and loss of the objective above.
        outer_iter, reg_init, inner_iter, max_iter, max_outer, tol, outer_tol, method: as
            in :func:`~pyg_grapheme.loss.structural_loss` (annealing off by default here).

    Returns:
        :class:`FGWResult` (batched like the input): ``plan``, ``potentials`` (``f``,
        ``g``), the final linearised ``cost``, ``iterations`` (``outer_iter``),
        ``residual`` (stationarity) and ``marginal_err``.

    Example::

        res = fgw(M, A, B, a, b, beta=0.5, reg=0.05)  # M [B, n, m], A [B, n, n], ...
        plan, (f, g) = res.plan, res.potentials
    """
    _check_edge_loss(edge_loss)
    if reg <= 0:
        raise ValueError(f"reg must be > 0, got {reg}")
    _check_iterations(outer_iter=outer_iter, inner_iter=inner_iter, max_iter=max_iter,
                      max_outer=max_outer)
    if M.dim() not in (2, 3):
        raise ValueError(f"M must have shape [n, m] or [B, n, m], got {tuple(M.shape)}")
    if M.size(-1) == 0 or M.size(-2) == 0:
        raise ValueError(f"M must have at least one row and one column, got {tuple(M.shape)}")
    squeeze = M.dim() == 2
    if squeeze:
        M, A, B, a, b = M[None], A[None], B[None], a[None], b[None]
    Bt, n, m = M.shape
    if A.shape != (Bt, n, n) or B.shape != (Bt, m, m) or a.shape != (Bt, n) or \
            b.shape != (Bt, m):
        raise ValueError(
            f"shape mismatch: M {tuple(M.shape)}, A {tuple(A.shape)}, B {tuple(B.shape)}, "
            f"a {tuple(a.shape)}, b {tuple(b.shape)}"
        )
    dtype = torch.promote_types(M.dtype, torch.float32)
    M, A, B, a, b = (t.to(dtype) for t in (M, A, B, a, b))
    edges = _DenseEdges(A, B, edge_loss) if beta > 0 else None
    out = _solve_fgw(
        M, edges, beta, a, b, torch.zeros(Bt, dtype=dtype, device=M.device), reg,
        n - 1, m - 1, outer_iter=outer_iter, reg_init=reg_init, anneal_iter=None,
        inner_iter=inner_iter, max_iter=max_iter, max_outer=max_outer,
        tol=_default_tol(tol, dtype, "tol"), outer_tol=_default_tol(outer_tol, dtype, "outer_tol"),
        method=method,
    )
    if squeeze:
        out = FGWResult(out.plan[0], out.f[0], out.g[0], out.cost[0], out.outer_iter,
                        out.residual[0], out.marginal_err[0])
    return out
