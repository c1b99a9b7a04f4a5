r"""The quadratic (edge) term of fused Gromov-Wasserstein and its gradient.

For a plan :math:`P` ``[B, R, C]`` between the augmented node sets of two graphs with
(soft) adjacencies :math:`A` ``[R, R]`` and :math:`B` ``[C, C]`` (dummies have no edges),

.. math::
    Q(P) = \sum_{ijkl} \ell(A_{ik}, B_{jl})\, P_{ij} P_{kl}, \qquad
    \ell(x, y) = f(x) + f(y) - 2xy,

with :math:`f(x) = x` (``edge_loss="l1"``: :math:`x + y - 2xy`, :math:`|x - y|` when
either side is 0/1, the expected number of disagreeing edges for independent Bernoulli
edges) or :math:`f(x) = x^2` (``"square"``: :math:`(x - y)^2`). Its gradient is

.. math::
    \nabla Q(P) = F_1 r \mathbf 1^\top + \mathbf 1 c^\top F_2^\top
        - 2 (A P B^\top + A^\top P B), \qquad F_1 = f(A) + f(A)^\top,\
        F_2 = f(B) + f(B)^\top,

with :math:`r = P\mathbf 1`, :math:`c = P^\top \mathbf 1` the plan's own marginals
(Peyre, Cuturi, Solomon 2016, Prop. 1). :class:`_Edges` computes both from the edge
lists, :math:`O(E_G\, C + E_H\, R)`, no dense adjacency; :class:`_DenseEdges` from dense
matrices (the functional :func:`~pyg_grapheme.loss.fgw`). Both have the interface the
solver needs, :class:`_Quadratic`.

References:
    - G. Peyre, M. Cuturi, J. Solomon, "Gromov-Wasserstein averaging of kernel and
      distance matrices", ICML 2016.
    - T. Vayer, L. Chapel, R. Flamary, R. Tavenard, N. Courty, "Optimal Transport for
      structured data with application on graphs", ICML 2019.
"""

from __future__ import annotations

import warnings
from typing import Protocol

import torch
from torch import Tensor

from pyg_grapheme.loss.inputs import _Dense

EDGE_LOSSES = ("l1", "square")


def _check_edge_loss(edge_loss: str) -> None:
    if edge_loss not in EDGE_LOSSES:
        raise ValueError(f"edge_loss must be one of {EDGE_LOSSES}, got {edge_loss!r}")


class _Quadratic(Protocol):
    """What the FGW solver needs of the quadratic term."""

    def grad(self, P: Tensor) -> Tensor:
        """:math:`\\nabla Q(P)`, ``[B, R, C]``."""
        ...

    def subset(self, keep: Tensor) -> _Quadratic:
        """The term restricted to the pairs ``keep`` (a ``[B]`` mask)."""
        ...


class _Edges:
    r"""Both sides' edges in the padded augmented index space (rows R = n+1, cols C = m+1).

    The adjacencies are block-diagonal sparse matrices over the whole batch
    (``[B*R, B*R]`` and ``[B*C, B*C]``; :meth:`grad` stacks ``A`` with ``A^T`` and ``B``
    with ``B^T`` as CSR): a product with a plan costs :math:`O(E\,C)` and never forms a
    dense ``n x n`` adjacency (see docs/loss.md for its speed against gather/``index_add``
    and against COO). Built from both sides' :class:`~pyg_grapheme.loss.inputs._Dense`.
    """

    def __init__(self, p: _Dense, t: _Dense, B: int, edge_loss: str, dtype: torch.dtype):
        self.R, self.C, self.B = p.n + 1, t.n + 1, B
        self.pr_src = p.eb * self.R + p.src
        self.pr_dst = p.eb * self.R + p.dst
        self.tc_src = t.eb * self.C + t.src
        self.tc_dst = t.eb * self.C + t.dst
        self.peb, self.teb = p.eb, t.eb
        dev = p.mass.device
        self.wp = torch.ones(p.src.numel(), dtype=dtype, device=dev) if p.w is None else p.w
        self.wt = torch.ones(t.src.numel(), dtype=dtype, device=dev) if t.w is None else t.w
        self.square = edge_loss == "square"
        self.empty = p.src.numel() == 0 and t.src.numel() == 0
        self._sparse: dict[str, Tensor] = {}

    def f(self, w: Tensor) -> Tensor:
        return w * w if self.square else w

    def subset(self, keep: Tensor) -> _Edges:
        """The edges of the pairs ``keep`` (a ``[B]`` mask), renumbered (detached)."""
        out = _Edges.__new__(_Edges)
        pos = torch.cumsum(keep.long(), 0) - 1  # new index of each kept pair
        out.R, out.C, out.B = self.R, self.C, int(keep.sum())
        kp, kt = keep[self.peb], keep[self.teb]
        peb, teb = self.peb[kp], self.teb[kt]
        out.peb, out.teb = pos[peb], pos[teb]
        shift_p, shift_t = ((peb - out.peb) * self.R), ((teb - out.teb) * self.C)
        out.pr_src, out.pr_dst = self.pr_src[kp] - shift_p, self.pr_dst[kp] - shift_p
        out.tc_src, out.tc_dst = self.tc_src[kt] - shift_t, self.tc_dst[kt] - shift_t
        out.wp, out.wt = self.wp[kp].detach(), self.wt[kt].detach()
        out.square = self.square
        out.empty = out.pr_src.numel() == 0 and out.tc_src.numel() == 0
        out._sparse = {}
        return out

    def stacked(self, side: str) -> Tensor:
        """``"A"``: ``[A; A^T]`` ``[2BR, BR]``; ``"B"``: ``[B | B^T]`` ``[BC, 2BC]``
        (detached, sparse CSR): the two products of :meth:`grad` in one call each."""
        key = side + "2"
        if key not in self._sparse:
            if side == "A":
                N, src, dst, w = self.B * self.R, self.pr_src, self.pr_dst, self.wp.detach()
                rows, cols = torch.cat([src, dst + N]), torch.cat([dst, src])
                shape = (2 * N, N)
            else:
                N, src, dst, w = self.B * self.C, self.tc_src, self.tc_dst, self.wt.detach()
                rows, cols = torch.cat([src, dst]), torch.cat([dst, src + N])
                shape = (N, 2 * N)
            # CSR: its product with a dense matrix is 1.7-2x COO's on CPU (docs/loss.md).
            self._sparse[key] = _sparse_matrix(rows, cols, torch.cat([w, w]), shape, csr=True)
        return self._sparse[key]

    def _right_bt(self, X: Tensor) -> Tensor:
        """``X B^T`` for ``X`` ``[B, R, C]``: ``(B X^T)^T``."""
        B, R, C = X.shape
        Xt = X.transpose(1, 2).reshape(B * C, R)
        if self.wt.requires_grad and torch.is_grad_enabled():
            # Differentiable w.r.t. the target's edge weights: scatter,
            # (X B^T)[:, j] = sum_{j -> l} w' X[:, l].
            out = Xt.new_zeros(B * C, R).index_add(
                0, self.tc_src, self.wt.unsqueeze(1) * Xt[self.tc_dst])
        else:
            if "B" not in self._sparse:
                N = B * C
                self._sparse["B"] = _sparse_matrix(self.tc_src, self.tc_dst,
                                                   self.wt.detach(), (N, N), csr=False)
            out = torch.sparse.mm(self._sparse["B"], Xt)
        return out.view(B, C, R).transpose(1, 2)

    @torch.no_grad()
    def grad(self, P: Tensor) -> Tensor:
        r""":math:`\nabla Q(P)`, ``[B, R, C]`` (the plan's own marginals in the constant part)."""
        B, R, C = P.shape
        r = P.sum(2).reshape(-1)
        c = P.sum(1).reshape(-1)
        fp, ft = self.f(self.wp), self.f(self.wt)
        F1 = (
            r.new_zeros(B * R)
            .index_add(0, self.pr_src, fp * r[self.pr_dst])
            .index_add(0, self.pr_dst, fp * r[self.pr_src])
        )
        F2 = (
            c.new_zeros(B * C)
            .index_add(0, self.tc_src, ft * c[self.tc_dst])
            .index_add(0, self.tc_dst, ft * c[self.tc_src])
        )
        # A P B^T + A^T P B in two sparse products instead of four: [A; A^T] P, then
        # (B [A P]^T + B^T [A^T P]^T)^T with [B | B^T] (docs/loss.md).
        AP = torch.sparse.mm(self.stacked("A"), P.reshape(B * R, C))  # [2BR, C]
        APt = AP.view(2, B, R, C).transpose(2, 3).reshape(2 * B * C, R)
        cross = torch.sparse.mm(self.stacked("B"), APt).view(B, C, R).transpose(1, 2)
        return F1.view(B, R, 1) + F2.view(B, 1, C) - 2.0 * cross

    def value(self, P: Tensor) -> Tensor:
        r""":math:`Q(P) = \sum_{ijkl} \ell(A_{ik}, B_{jl}) P_{ij} P_{kl}` per pair, ``[B]``;
        differentiable w.r.t. the edge weights (``P`` is taken as a constant)."""
        B, R, C = P.shape
        r = P.sum(2).reshape(-1)
        c = P.sum(1).reshape(-1)
        out = P.new_zeros(B)
        out = out.index_add(0, self.peb, self.f(self.wp) * r[self.pr_src] * r[self.pr_dst])
        out = out.index_add(0, self.teb, self.f(self.wt) * c[self.tc_src] * c[self.tc_dst])
        # <P, A P B^T> = sum_{e=(i->k)} w_e <P[i, :], (P B^T)[k, :]>
        PBt = self._right_bt(P).reshape(B * R, C)
        Pf = P.reshape(B * R, C)
        s = (Pf[self.pr_src] * PBt[self.pr_dst]).sum(1)
        return out.index_add(0, self.peb, -2.0 * self.wp * s)


def _sparse_matrix(rows: Tensor, cols: Tensor, values: Tensor, shape: tuple[int, int],
                   csr: bool) -> Tensor:
    """A coalesced sparse matrix (duplicate entries summed), COO or CSR."""
    coo = torch.sparse_coo_tensor(torch.stack([rows, cols]), values, shape,
                                  check_invariants=False).coalesce()
    if not csr:
        return coo
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
        warnings.simplefilter("ignore", UserWarning)
        return coo.to_sparse_csr()


class _DenseEdges:
    """Dense adjacencies ``[B, R, R]``, ``[B, C, C]`` with the same interface as
    :class:`_Edges` (``grad``, ``subset``) for :func:`~pyg_grapheme.loss.fgw`."""

    def __init__(self, A: Tensor, Bm: Tensor, edge_loss: str):
        self.A, self.Bm = A, Bm
        fa, fb = (A * A, Bm * Bm) if edge_loss == "square" else (A, Bm)
        self.fa = fa + fa.transpose(1, 2)
        self.fb = fb + fb.transpose(1, 2)

    def subset(self, keep: Tensor) -> _DenseEdges:
        out = _DenseEdges.__new__(_DenseEdges)
        out.A, out.Bm, out.fa, out.fb = self.A[keep], self.Bm[keep], self.fa[keep], self.fb[keep]
        return out

    def grad(self, P: Tensor) -> Tensor:
        r, c = P.sum(2, keepdim=True), P.sum(1, keepdim=True)  # [B, R, 1], [B, 1, C]
        F1 = self.fa @ r
        F2 = (self.fb @ c.transpose(1, 2)).transpose(1, 2)
        cross = self.A @ P @ self.Bm.transpose(1, 2) + self.A.transpose(1, 2) @ P @ self.Bm
        return F1 + F2 - 2.0 * cross
