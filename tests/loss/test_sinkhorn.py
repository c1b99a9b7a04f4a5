"""Batched Sinkhorn: POT (``ot.bregman.sinkhorn_log``) is the oracle."""

import math

import ot
import pytest
import torch

from pyg_grapheme.loss import sinkhorn
from pyg_grapheme.loss.sinkhorn import c_transform_rows, solve


def padded_problem(ns, ms, dtype=torch.float64, scale=3.0, seed=0):
    """A batch of problems of different sizes, zero-mass padding, random masses."""
    g = torch.Generator().manual_seed(seed)
    B, n, m = len(ns), max(ns), max(ms)
    C = torch.rand(B, n, m, generator=g, dtype=dtype) * scale
    a = torch.zeros(B, n, dtype=dtype)
    b = torch.zeros(B, m, dtype=dtype)
    for k, (nk, mk) in enumerate(zip(ns, ms, strict=True)):
        a[k, :nk] = torch.rand(nk, generator=g, dtype=dtype) + 0.1
        b[k, :mk] = torch.rand(mk, generator=g, dtype=dtype) + 0.1
        b[k] *= a[k].sum() / b[k].sum()
    return C, a, b


NS, MS = [3, 7, 1, 5, 6], [4, 2, 6, 5, 1]


@pytest.mark.parametrize("method", ["stabilized", "log"])
@pytest.mark.parametrize("reg", [0.5, 0.05])
def test_agrees_with_pot_sinkhorn_log(method, reg):
    C, a, b = padded_problem(NS, MS)
    out = sinkhorn(C, a, b, reg, tol=1e-13, max_iter=100_000, method=method)
    for k, (n, m) in enumerate(zip(NS, MS, strict=True)):
        Ck = C[k, :n, :m]
        P = ot.bregman.sinkhorn_log(a[k, :n], b[k, :m], Ck, reg, numItermax=100_000, stopThr=1e-14)
        value = (P * Ck).sum() + reg * torch.xlogy(P, P).sum()
        torch.testing.assert_close(out.plan[k, :n, :m], P, atol=1e-6, rtol=0)
        torch.testing.assert_close(out.value[k], value, atol=1e-6, rtol=0)
        torch.testing.assert_close(out.value_linear[k], (P * Ck).sum(), atol=1e-6, rtol=0)
        # Padding carries no mass.
        assert out.plan[k, n:].abs().sum() == 0 and out.plan[k, :, m:].abs().sum() == 0


def test_absent_cells_may_hold_inf_and_nan():
    C, a, b = padded_problem(NS, MS)
    ref = sinkhorn(C, a, b, 0.1, tol=1e-12, max_iter=10_000)
    C2 = C.clone()
    C2[(a == 0).unsqueeze(2).expand_as(C)] = float("inf")
    C2[(b == 0).unsqueeze(1).expand_as(C)] = float("nan")
    C2.requires_grad_()
    out = sinkhorn(C2, a, b, 0.1, tol=1e-12, max_iter=10_000)
    torch.testing.assert_close(out.plan, ref.plan)
    out.value.sum().backward()
    assert torch.isfinite(out.value).all() and torch.isfinite(C2.grad).all()


def test_gradient_wrt_cost_is_that_of_the_regularised_objective():
    # Envelope theorem: d/dC [<P,C> + reg * sum P log P] at the converged plan.
    C, a, b = padded_problem([3, 4], [4, 2])
    C.requires_grad_()

    def f(C):
        return sinkhorn(C, a, b, 0.3, tol=1e-14, max_iter=100_000).value.sum()

    assert torch.autograd.gradcheck(f, (C,), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_gradient_wrt_cost_is_the_plan():
    C, a, b = padded_problem([4], [5], scale=1.0)
    C.requires_grad_()
    out = sinkhorn(C, a, b, 0.5, tol=1e-14, max_iter=100_000)
    (grad,) = torch.autograd.grad(out.value.sum(), C)
    torch.testing.assert_close(grad, out.plan)


def test_gradient_wrt_masses_matches_finite_differences():
    C, a, b = padded_problem([4, 3], [3, 5])
    reg = 0.2
    a.requires_grad_()
    b.requires_grad_()
    out = sinkhorn(C, a, b, reg, tol=1e-14, max_iter=100_000)
    ga, gb = torch.autograd.grad(out.value.sum(), (a, b))
    h = 1e-6
    for k, i, j in [(0, 1, 2), (0, 3, 0), (1, 2, 4)]:
        # A mass-preserving perturbation: a_i and b_j together.
        def value(t, k=k, i=i, j=j):
            a2, b2 = a.detach().clone(), b.detach().clone()
            a2[k, i] += t
            b2[k, j] += t
            return sinkhorn(C, a2, b2, reg, tol=1e-14, max_iter=100_000).value[k]

        fd = (value(h) - value(-h)) / (2 * h)
        torch.testing.assert_close(ga[k, i] + gb[k, j], fd, atol=1e-6, rtol=1e-5)


def test_zero_mass_rows_get_finite_gradients():
    C, a, b = padded_problem([4], [4])
    a[0, 1] = 0.0
    b[0] *= a[0].sum() / b[0].sum()
    a.requires_grad_()
    b.requires_grad_()
    out = sinkhorn(C, a, b, 0.1)
    ga, gb = torch.autograd.grad(out.value.sum(), (a, b))
    assert torch.isfinite(ga).all() and torch.isfinite(gb).all()
    assert out.plan[0, 1].abs().sum() == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale,reg", [(1e3, 1e-3), (1e3, 0.1), (1.0, 1e-3), (10.0, 1e-2)])
def test_finite_at_large_cost_over_reg(dtype, scale, reg):
    C, a, b = padded_problem([20, 5, 13], [7, 19, 13], dtype=dtype, scale=scale)
    a, b = a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)
    C.requires_grad_()
    out = sinkhorn(C, a, b, reg, max_iter=200)
    log = sinkhorn(C, a, b, reg, max_iter=200, method="log")
    out.value.sum().backward()
    assert torch.isfinite(out.value).all() and torch.isfinite(C.grad).all()
    assert torch.isfinite(out.plan).all() and (out.plan >= 0).all()
    # The same iterate as log-domain Sinkhorn (scaling steps are the same map).
    torch.testing.assert_close(out.value, log.value, atol=1e-3 * scale, rtol=1e-3)
    if dtype == torch.float64:  # float32 rounds (f + g - M) / reg at M / reg ~ 1e6
        torch.testing.assert_close(out.plan.sum(1), b, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_underflow_gives_exact_zeros_not_subnormals(dtype):
    # Most kernel entries underflow at cost / reg ~ 1e3-1e4. The kernel clamps its exp
    # (CPU's slow path for subnormal results) and must still return exact zeros there,
    # never subnormals (which slow every later mat-vec), and keep padding at exactly 0.
    C, a, b = padded_problem([20, 5, 13], [7, 19, 13], dtype=dtype, scale=10.0)
    out = sinkhorn(C, a, b, 1e-3, max_iter=300)
    P, tiny = out.plan, torch.finfo(dtype).tiny
    assert not bool(((P > 0) & (P < tiny)).any())
    assert bool((P == 0).any())  # there was underflow to test
    pad = ~((a > 0).unsqueeze(2) & (b > 0).unsqueeze(1))
    assert bool((P[pad] == 0).all())
    log = sinkhorn(C, a, b, 1e-3, max_iter=300, method="log")
    torch.testing.assert_close(out.value, log.value, atol=1e-3, rtol=1e-4)
    # Problems that meet a loose tol right after an absorption (the kernel multiplied by
    # the scalings, not rebuilt) leave subnormal-free plans too.
    g_ = torch.Generator().manual_seed(0)
    C = torch.rand(16, 30, 30, generator=g_, dtype=dtype) * 3
    a = torch.rand(16, 30, generator=g_, dtype=dtype) * 5 + 0.01
    b = torch.rand(16, 30, generator=g_, dtype=dtype) * 5 + 0.01
    b *= a.sum(1, keepdim=True) / b.sum(1, keepdim=True)
    for reg, tol in ((0.03, 0.1), (0.01, 0.03)):
        P = sinkhorn(C, a, b, reg, tol=tol).plan
        assert not bool(((P > 0) & (P < tiny)).any()), (reg, tol)


def test_absent_cells_stay_zero_under_huge_warm_start_potentials():
    # An absent row's potential is 0 while present columns' can be large: its kernel
    # argument must never overflow to inf (inf * 0 = nan on the way to the mask).
    C, a, b = padded_problem(NS, MS, dtype=torch.float32)
    g0 = torch.where(b > 0, torch.full_like(b, 20.0), 0.0)  # (f + g) / eps ~ 200
    f, g, P, _, err = solve(C, a, b, 0.1, init=(torch.zeros_like(a), g0), max_iter=500,
                            tol=1e-5)
    assert torch.isfinite(P).all() and torch.isfinite(f).all() and torch.isfinite(g).all()
    ref = solve(C, a, b, 0.1, max_iter=500, tol=1e-5)[2]
    torch.testing.assert_close(P, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_soft_c_transform_is_a_masked_logsumexp(dtype):
    g_ = torch.Generator().manual_seed(3)
    M = torch.randn(3, 4, 6, generator=g_, dtype=dtype) * 50  # spans far below the max
    gpot = torch.randn(3, 6, generator=g_, dtype=dtype)
    col_ok = torch.rand(3, 6, generator=g_) > 0.4
    col_ok[2] = False  # no column present: 0 by convention
    M[1, 0] = float("inf")  # a row whose present costs are all infinite: 0 as well
    M[1, 1, 0] = float("-inf")
    eps = 0.05
    z = torch.where(col_ok.unsqueeze(1), (gpot.unsqueeze(1) - M) / eps, float("-inf"))
    ref = -eps * torch.logsumexp(z, 2)
    ref = torch.where(torch.isfinite(ref), ref, 0.0)
    torch.testing.assert_close(c_transform_rows(gpot, M, eps, col_ok), ref)


def test_pot_scaling_domain_fails_where_we_do_not():
    # The regime of anchors section 2: POT's default solver returns ~0 for M/reg ~ 1e4.
    C, a, b = padded_problem([6], [6], scale=1e3)
    a, b = a / a.sum(), b / b.sum()
    ours = sinkhorn(C, a, b, 0.1, max_iter=2000)
    exact = ot.emd2(a[0], b[0], C[0])
    assert abs(float(ours.value_linear[0]) - float(exact)) < 0.05 * float(exact)


def test_fixed_iteration_count_and_warm_start():
    C, a, b = padded_problem(NS, MS)
    out = sinkhorn(C, a, b, 0.05, max_iter=100, tol=0)
    assert out.n_iter == 100
    cold = solve(C, a, b, 0.05, tol=1e-10, max_iter=10_000)
    warm = solve(C, a, b, 0.05, tol=1e-10, max_iter=10_000, init=(cold[0], cold[1]))
    assert warm[3] < cold[3] / 5
    torch.testing.assert_close(warm[2], cold[2])


def test_memory_saved_for_backward_does_not_grow_with_iterations():
    C, a, b = padded_problem([30, 20], [25, 30], dtype=torch.float32)

    def saved_bytes(iters):
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        X = C.clone().requires_grad_()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            sinkhorn(X * 1.0, a, b, 0.05, max_iter=iters, tol=0).value.sum()
        return total

    small, large = saved_bytes(10), saved_bytes(300)
    assert small == large
    assert large <= 4 * C.numel() * 4


def test_empty_and_single_problems():
    C = torch.zeros(0, 3, 4)
    out = sinkhorn(C, torch.zeros(0, 3), torch.zeros(0, 4), 0.1)
    assert out.value.shape == (0,)
    out = sinkhorn(torch.ones(2, 3), torch.full((2,), 0.5), torch.full((3,), 1 / 3), 0.1)
    assert out.value.dim() == 0 and math.isclose(float(out.value_linear), 1.0, rel_tol=1e-6)
    out = sinkhorn(torch.zeros(2, 0, 0), torch.zeros(2, 0), torch.zeros(2, 0), 0.1)
    assert out.value.tolist() == [0.0, 0.0]


def test_bad_inputs():
    with pytest.raises(ValueError, match="reg"):
        sinkhorn(torch.ones(1, 2, 2), torch.ones(1, 2), torch.ones(1, 2), 0.0)
    with pytest.raises(ValueError, match="shape"):
        sinkhorn(torch.ones(1, 2, 2), torch.ones(1, 3), torch.ones(1, 2), 0.1)
    with pytest.raises(ValueError, match="method"):
        sinkhorn(torch.ones(1, 2, 2), torch.ones(1, 2), torch.ones(1, 2), 0.1, method="x")


def test_problems_that_meet_tol_leave_the_batch_with_their_own_solution():
    # Problems of very different difficulty (reg 0.5 vs cost/reg ~ 60): each batched
    # result must be the one-problem solve, and every problem must meet tol, though the
    # easy ones stop (and are written back) long before the hard ones.
    C, a, b = padded_problem(NS, MS, scale=3.0)
    C[1] *= 3.0
    tol = 1e-10
    f, g, P, it, err = solve(C, a, b, 0.05, tol=tol, max_iter=20_000)
    assert bool((err <= tol * a.sum(1)).all())
    iters = []
    for k in range(len(NS)):
        fk, gk, Pk, itk, _ = solve(C[k:k + 1], a[k:k + 1], b[k:k + 1], 0.05, tol=tol,
                                   max_iter=20_000)
        iters.append(itk)
        torch.testing.assert_close(P[k], Pk[0], atol=1e-8, rtol=0)
        row, col = a[k] > 0, b[k] > 0
        # potentials up to the (f + t, g - t) gauge
        shift = (f[k][row][0] - fk[0][row][0])
        torch.testing.assert_close(f[k][row] - shift, fk[0][row], atol=1e-7, rtol=0)
        torch.testing.assert_close(g[k][col] + shift, gk[0][col], atol=1e-7, rtol=0)
    assert max(iters) == it and min(iters) < it / 2  # the easy ones left early
