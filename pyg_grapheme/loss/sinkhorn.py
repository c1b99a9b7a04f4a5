r"""Batched entropic optimal transport on padded tensors.

Every problem of a batch is solved in one call on ``[B, n, m]`` tensors. A row or
column of zero mass is absent (padding, or a node of mass 0): its plan entries are
exactly 0 and its cost entries are never read, so costs may hold ``inf`` or ``nan``
there.

The solver is Sinkhorn's scaling algorithm stabilised by *absorption* of the scalings
into log-domain potentials (Schmitzer 2019). It runs blocks of plain scaling iterations
(two batched mat-vecs each, no ``exp``), then folds the scalings into the potentials
and rebuilds the kernel with one ``exp``. A block whose scalings left a safe range
(underflow, overflow: large cost/reg ratios) is discarded and redone as exact
log-domain iterations, so the result is finite wherever log-domain Sinkhorn is.

References:
    - M. Cuturi, "Sinkhorn Distances: Lightspeed Computation of Optimal Transport",
      NeurIPS 2013.
    - B. Schmitzer, "Stabilized Sparse Scaling Algorithms for Entropy Regularized
      Transport Problems", SIAM J. Sci. Comput. 41(3), 2019 (arXiv:1610.06519).
    - G. Peyre, M. Cuturi, "Computational Optimal Transport", 2019, Sec. 4.4 (log domain)
      and Sec. 9.1 (differentiating the regularised cost: the envelope gradient).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["sinkhorn", "SinkhornOutput"]


class SinkhornOutput(NamedTuple):
    """Result of :func:`sinkhorn`.

    Attributes:
        value: ``[B]`` regularised cost :math:`\\langle P, C\\rangle + \\varepsilon
            \\sum P \\log P`; differentiable w.r.t. ``cost``, ``a`` and ``b`` (envelope).
        value_linear: ``[B]`` :math:`\\langle P, C\\rangle`, detached.
        plan: ``[B, n, m]`` transport plan :math:`P`, detached.
        f: ``[B, n]`` row potentials (0 on absent rows), detached.
        g: ``[B, m]`` column potentials (0 on absent columns), detached.
        n_iter: iterations run (the same for the whole batch).
        err: ``[B]`` L1 violation of the row marginal at return (absolute).
    """

    value: Tensor
    value_linear: Tensor
    plan: Tensor
    f: Tensor
    g: Tensor
    n_iter: int
    err: Tensor


def _floor(dtype: torch.dtype) -> float:
    # Smallest divisor/argument of log we allow: keeps a/x and log(x) finite.
    return torch.finfo(dtype).tiny


def _log_tau(dtype: torch.dtype) -> float:
    # Scalings beyond exp(+-log_tau) are absorbed no later than the block's end; inside
    # that range no kernel entry that matters can have underflowed (relevant entries are
    # >= mass / tau^2, far above the smallest normal number).
    return 0.2 * math.log(torch.finfo(dtype).max)


def _exp_low(dtype: torch.dtype) -> float:
    # On CPU, exp of an argument at or below log(tiny) (a subnormal or 0 result, or
    # -inf) takes a slow path, up to 30-40x the time of the vectorised one
    # (docs/loss.md), and Sinkhorn kernels at small reg are mostly such entries.
    # Arguments are clamped one unit above it (exp = e * tiny, still a normal number);
    # the kernel then zeroes what sits at the clamp, as an underflow would have.
    return math.log(torch.finfo(dtype).tiny) + 1.0


def _masks(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    row = a > 0
    col = b > 0
    return row, col, row.unsqueeze(2) & col.unsqueeze(1)


def c_transform_rows(g: Tensor, M: Tensor, eps: float, col_ok: Tensor) -> Tensor:
    r"""Soft c-transform over columns, without the row mass.

    .. math::
        \tilde f_i = -\varepsilon \log \sum_{j:\, b_j > 0}
        \exp\big((g_j - M_{ij}) / \varepsilon\big)

    so the exact row update is :math:`f_i = \varepsilon \log a_i + \tilde f_i`. Finite for
    every row (also rows of mass 0) as long as one column is present; 0 otherwise.
    Shapes: ``g [B, m]``, ``M [B, n, m]``, ``col_ok [B, m]`` -> ``[B, n]``.
    """
    z = torch.where(col_ok.unsqueeze(1), (g.unsqueeze(1) - M) / eps, float("-inf"))
    return _soft_min(z, 2, eps)


def _soft_min(z: Tensor, dim: int, eps: float) -> Tensor:
    r""":math:`-\varepsilon \log \sum \exp z` along ``dim``, ``z`` a fresh temporary
    (overwritten) with ``-inf`` on absent entries; 0 where the max is not finite (nothing
    present, or infinite costs), as the ``-inf`` / ``inf`` of :func:`torch.logsumexp`
    were. By hand, its ``exp`` clamped at :func:`_exp_low`: ``torch.logsumexp`` takes the
    slow path on the many entries far below the max, and absent entries add
    ``e * tiny``, nothing a sum >= 1 can see."""
    mx = z.amax(dim=dim, keepdim=True)
    fin = torch.isfinite(mx)
    mx = torch.where(fin, mx, 0.0)
    lse = z.sub_(mx).clamp_min_(_exp_low(z.dtype)).exp_().sum(dim).log_() + mx.squeeze(dim)
    return torch.where(fin.squeeze(dim), -eps * lse, 0.0)


def c_transform_cols(f: Tensor, M: Tensor, eps: float, row_ok: Tensor) -> Tensor:
    r"""Column counterpart of :func:`c_transform_rows`: ``[B, m]``."""
    return c_transform_rows(f, M.transpose(1, 2), eps, row_ok)


@torch.no_grad()
def solve(
    M: Tensor,
    a: Tensor,
    b: Tensor,
    eps: float,
    *,
    init: tuple[Tensor, Tensor] | None = None,
    max_iter: int = 1000,
    tol: float = 1e-9,
    block: int = 10,
    method: str = "stabilized",
) -> tuple[Tensor, Tensor, Tensor, int, Tensor]:
    r"""Solve :math:`\min_{P \ge 0,\, P1=a,\, P^T1=b} \langle P, M\rangle + \varepsilon
    \sum_{ij} P_{ij}\log P_{ij}` for a batch, without autograd.

    The plan is :math:`P_{ij} = \exp((f_i + g_j - M_{ij})/\varepsilon)` on present cells.

    Args:
        M: ``[B, n, m]`` cost (entries of absent rows/columns are ignored).
        a: ``[B, n]`` row masses >= 0; b: ``[B, m]`` column masses >= 0, with
            ``a.sum(-1) == b.sum(-1)`` per problem.
        eps: entropic regularisation > 0.
        init: warm-start potentials ``(f, g)``.
        max_iter: iterations at most (a log-domain refresh at the start is not counted).
        tol: a problem stops when its L1 row-marginal violation is <= tol times its
            total mass (checked once per block) and leaves the batch, the others go on;
            ``tol=0`` runs exactly ``max_iter`` iterations.
        block: scaling iterations between absorptions.
        method: ``"stabilized"`` (scaling with absorption) or ``"log"`` (log-domain only).

    Returns:
        ``(f, g, P, n_iter, err)``.
    """
    if method not in ("stabilized", "log"):
        raise ValueError(f"unknown Sinkhorn method {method!r}; use 'stabilized' or 'log'")
    B, n, m = M.shape
    row_ok, col_ok, cell_ok = _masks(a, b)
    if B * n * m == 0:
        zero = M.new_zeros(B)
        return torch.zeros_like(a), torch.zeros_like(b), torch.zeros_like(M), 0, zero
    M = torch.where(cell_ok, M, torch.zeros((), dtype=M.dtype, device=M.device))
    floor = _floor(M.dtype)
    fl = M.new_full((1, 1, 1), floor)
    log_tau = _log_tau(M.dtype)
    if init is None:
        f = torch.zeros_like(a)
        g = torch.zeros_like(b)
    else:
        f = torch.where(row_ok, init[0], 0.0)
        g = torch.where(col_ok, init[1], 0.0)
    # Outputs of the whole batch. A problem that meets ``tol`` is written here at once
    # (its result is final) and marked ``stored``; the working set is compacted only
    # once a quarter of it is stored (the stored ones iterate on meanwhile, unread):
    # compacting copies every [B, n, m] tensor, which cost more than the iterations it
    # saves when one problem leaves at a time (docs/loss.md).
    f_out, g_out, K_out, err_out = f, g, torch.zeros_like(M), M.new_zeros(B)
    idx = torch.arange(B, device=M.device)
    stored = torch.zeros(B, dtype=torch.bool, device=M.device)
    mass = a.sum(1)
    # M / eps with +inf on absent cells: their kernel argument is -inf, clamped and
    # zeroed like any underflow (never an overflow times a mask).
    M_eps = torch.where(cell_ok, M / eps, float("inf"))
    low = _exp_low(M.dtype)
    low_cut = 4.0 * torch.finfo(M.dtype).tiny  # above exp(low) = e * tiny
    log_a = torch.where(row_ok, a.clamp_min(floor).log(), 0.0)
    log_b = torch.where(col_ok, b.clamp_min(floor).log(), 0.0)

    def log_step(f: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        # One exact log-domain iteration (POT's sinkhorn_log update, rows then columns):
        # c_transform_rows / _cols on M_eps, whose +inf already masks the absent cells
        # (six passes over [B, n, m] each instead of nine).
        f = torch.where(row_ok, eps * log_a + _soft_min(g.unsqueeze(1) / eps - M_eps, 2, eps),
                        0.0)
        g = torch.where(col_ok, eps * log_b + _soft_min(f.unsqueeze(2) / eps - M_eps, 1, eps),
                        0.0)
        return f, g

    def kernel(f: Tensor, g: Tensor) -> Tensor:
        # exp((f_i + g_j - M_ij) / eps), 0 on absent cells; in place, one temporary.
        K = (f / eps).unsqueeze(2) + (g / eps).unsqueeze(1)
        K = K.sub_(M_eps).clamp_min_(low).exp_()
        # Entries at the clamp (absent cells included) become exact zeros, as an
        # underflow would: a subnormal or tiny entry slows every mat-vec it enters.
        return torch.threshold_(K, low_cut, 0.0)

    def row_err(K: Tensor) -> Tensor:
        return (K.sum(2) - a).abs().sum(1)

    # A log-domain iteration first: it balances the kernel whatever the warm start, so
    # no present row or column starts out all-underflowed (skipping it for balanced warm
    # starts was measured and not kept: docs/loss.md).
    f, g = log_step(f, g)
    K = kernel(f, g)
    err = row_err(K)
    it = 0
    since_exp = 0
    while it < max_iter:
        if tol > 0:
            new = (err <= tol * mass) & ~stored
            if bool(new.any()):
                d = new.nonzero().squeeze(1)
                gd = idx.index_select(0, d)
                f_out = f_out.index_copy(0, gd, f.index_select(0, d))
                g_out = g_out.index_copy(0, gd, g.index_select(0, d))
                K_out = K_out.index_copy(0, gd, K.index_select(0, d))
                err_out = err_out.index_copy(0, gd, err.index_select(0, d))
                stored = stored | new
            n_stored = int(stored.sum())
            if n_stored == stored.numel():
                break
            if 4 * n_stored >= stored.numel():
                # Converged problems leave the working set; the others go on as a
                # smaller batch (integer indices: one nonzero for all tensors).
                k_ = (~stored).nonzero().squeeze(1)
                idx, f, g, K, err = (t.index_select(0, k_) for t in (idx, f, g, K, err))
                a, b, mass, M, M_eps = (t.index_select(0, k_) for t in (a, b, mass, M, M_eps))
                row_ok, col_ok = row_ok.index_select(0, k_), col_ok.index_select(0, k_)
                log_a, log_b = log_a.index_select(0, k_), log_b.index_select(0, k_)
                stored = stored.index_select(0, k_)
        k = min(block, max_iter - it)
        ok = method == "stabilized"
        if ok:
            a3, b3 = a.unsqueeze(1), b.unsqueeze(1)
            u = torch.ones_like(a3)
            v = torch.ones_like(b3)
            Kt = K.transpose(1, 2)
            for _ in range(k):
                # a / (K v + floor): absent rows have a = 0 -> u = 0, never 0/0. Mat-vecs
                # as row-vector products [B,1,m]@[B,m,n] (on CPU bmm is much faster so than
                # as [B,n,m]@[B,m,1]); baddbmm adds the floor in the same call (two ops per
                # half-step instead of five). Timings: docs/loss.md.
                u = a3 / torch.baddbmm(fl, v, Kt)
                v = b3 / torch.baddbmm(fl, u, K)
            u, v = u.squeeze(1), v.squeeze(1)
            lu = torch.where(row_ok, u.clamp_min(floor).log(), 0.0)
            lv = torch.where(col_ok, v.clamp_min(floor).log(), 0.0)
            big = torch.maximum(lu.abs().max(), lv.abs().max())
            ok = bool(torch.isfinite(big)) and float(big) < log_tau
        it += k
        if ok:
            # Absorb the scalings into the potentials. The new kernel is the current plan
            # diag(u) K diag(v): a multiply, not an exp; every few absorptions (and at the
            # end) it is rebuilt from the potentials to shed rounding and underflow.
            f = f + eps * lu
            g = g + eps * lv
            since_exp += 1
            if since_exp >= 4 or it >= max_iter:
                K = kernel(f, g)
                since_exp = 0
            else:
                K = K.mul_(u.unsqueeze(2)).mul_(v.unsqueeze(1))
                torch.threshold_(K, low_cut, 0.0)  # no subnormals from the product either
        else:
            # Scalings left the safe range (or method="log"): redo the block exactly.
            for _ in range(k):
                f, g = log_step(f, g)
            K = kernel(f, g)
            since_exp = 0
        err = row_err(K)
    if idx.numel() == B and not bool(stored.any()):  # nobody stored: no copies
        return f, g, K, it, err
    # The problems not stored yet: those that did not meet ``tol`` (and, when the
    # loop ran out, those whose last block met it).
    rest = (~stored).nonzero().squeeze(1)
    gr = idx.index_select(0, rest)
    f_out = f_out.index_copy(0, gr, f.index_select(0, rest))
    g_out = g_out.index_copy(0, gr, g.index_select(0, rest))
    K_out = K_out.index_copy(0, gr, K.index_select(0, rest))
    err_out = err_out.index_copy(0, gr, err.index_select(0, rest))
    return f_out, g_out, K_out, it, err_out


def sinkhorn(
    cost: Tensor,
    a: Tensor,
    b: Tensor,
    reg: float,
    *,
    max_iter: int = 1000,
    tol: float = 1e-9,
    init: tuple[Tensor, Tensor] | None = None,
    method: str = "stabilized",
    block: int = 10,
) -> SinkhornOutput:
    r"""Batched entropic OT with an envelope-theorem gradient.

    Solves, for every problem :math:`k` of the batch,

    .. math::
        W_\varepsilon(C, a, b) = \min_{P \ge 0,\ P\mathbf 1 = a,\ P^\top \mathbf 1 = b}
        \langle P, C\rangle + \varepsilon \sum_{ij} P_{ij} \log P_{ij}

    (POT's convention, :func:`ot.bregman.sinkhorn_log`) with stabilised scaling
    (Schmitzer 2019). The gradient is that of the converged regularised cost, by the
    envelope theorem: :math:`\partial W/\partial C = P`,
    :math:`\partial W/\partial a_i = f_i + \varepsilon/2`,
    :math:`\partial W/\partial b_j = g_j + \varepsilon/2` (the potentials are defined up to
    :math:`(f + t, g - t)`, so only mass-preserving perturbations of ``a`` and ``b`` are
    meaningful). Nothing of the iterations is kept for backward: memory
    :math:`O(Bnm)` whatever ``max_iter``. For a row of mass 0 the true derivative is
    :math:`-\infty`; it is reported as :math:`\varepsilon\log(\text{tiny})` plus the soft
    c-transform, finite.

    Args:
        cost: ``[B, n, m]`` or ``[n, m]``.
        a: ``[B, n]`` or ``[n]`` row masses >= 0 (0 = absent row, e.g. padding).
        b: ``[B, m]`` or ``[m]`` column masses >= 0, same total as ``a`` per problem.
        reg: :math:`\varepsilon > 0`.
        max_iter, tol, init, method, block: see :func:`solve`.

    Returns:
        :class:`SinkhornOutput` (``value`` is ``[B]``, or a scalar for 2-D input).
    """
    if reg <= 0:
        raise ValueError(f"reg must be > 0, got {reg}")
    squeeze = cost.dim() == 2
    if squeeze:
        cost, a, b = cost.unsqueeze(0), a.unsqueeze(0), b.unsqueeze(0)
    if cost.dim() != 3 or a.shape != cost.shape[:2] or b.shape != (cost.shape[0], cost.shape[2]):
        raise ValueError(
            f"shape mismatch: cost {tuple(cost.shape)}, a {tuple(a.shape)}, b {tuple(b.shape)}"
        )
    dtype = torch.promote_types(cost.dtype, torch.float32)
    C, a_, b_ = cost.to(dtype), a.to(dtype), b.to(dtype)
    f, g, P, n_iter, err = solve(
        C.detach(), a_.detach(), b_.detach(), reg,
        init=init, max_iter=max_iter, tol=tol, method=method, block=block,
    )
    row_ok, col_ok, cell_ok = _masks(a_.detach(), b_.detach())
    Cm = torch.where(cell_ok, C, torch.zeros((), dtype=dtype, device=C.device))
    lin = (P * Cm).sum((1, 2))
    ent = torch.xlogy(P, P).sum((1, 2))
    value = lin + reg * ent
    if a_.requires_grad or b_.requires_grad:
        floor = math.log(_floor(dtype))
        Md = Cm.detach()
        fa = torch.where(row_ok, f, reg * floor + c_transform_rows(g, Md, reg, col_ok)) + reg / 2
        gb = torch.where(col_ok, g, reg * floor + c_transform_cols(f, Md, reg, row_ok)) + reg / 2
        # Zero in value, envelope gradient (f, g) in backward.
        value = value + (fa * (a_ - a_.detach())).sum(1) + (gb * (b_ - b_.detach())).sum(1)
    out = SinkhornOutput(value, lin.detach(), P, f, g, n_iter, err)
    if squeeze:
        out = out._replace(
            value=value[0], value_linear=out.value_linear[0], plan=P[0], f=f[0], g=g[0],
            err=err[0],
        )
    return out
