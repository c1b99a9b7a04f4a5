"""The functional FGW solver against POT's entropic fused Gromov-Wasserstein (oracle)."""

import ot
import pytest
import torch
from torch_geometric.data import Data

from pyg_grapheme.loss import fgw, structural_loss


def _problem(n, m, seed, soft=True):
    g = torch.Generator().manual_seed(seed)
    M = torch.rand(n, m, generator=g, dtype=torch.float64)
    A = (torch.rand(n, n, generator=g, dtype=torch.float64) < 0.4).double()
    B = (torch.rand(m, m, generator=g, dtype=torch.float64) < 0.4).double()
    if soft:
        A = A * torch.rand(n, n, generator=g, dtype=torch.float64)
    a = torch.rand(n, generator=g, dtype=torch.float64) + 0.5
    b = torch.rand(m, generator=g, dtype=torch.float64) + 0.5
    return M, A, B, a / a.sum(), b / b.sum()


@pytest.mark.filterwarnings("ignore:Solver failed")
@pytest.mark.parametrize("seed", [0, 1])
def test_plan_agrees_with_pot_entropic_fgw(seed):
    beta, reg = 0.7, 0.2
    M, A, B, a, b = _problem(5, 4, seed)
    ours = fgw(M, A, B, a, b, beta=beta, reg=reg, max_outer=500)
    T = ot.gromov.entropic_fused_gromov_wasserstein(
        M, A, B, a, b, loss_fun="square_loss", epsilon=reg / (1 + beta),
        alpha=beta / (1 + beta), symmetric=False, G0=torch.outer(a, b), max_iter=2000,
        tol=1e-14, numItermax=10_000, stopThr=1e-15,
    )
    torch.testing.assert_close(ours.plan, T, atol=1e-6, rtol=0)
    assert float(ours.residual) < 1e-8 and float(ours.marginal_err) < 1e-9
    # The plan is a fixed point: one more linearised Sinkhorn step reproduces it.
    torch.testing.assert_close(
        ours.plan, torch.exp((ours.f[:, None] + ours.g[None] - ours.cost) / reg),
        atol=1e-9, rtol=0,
    )


def test_batched_with_padding_equals_one_at_a_time():
    probs = [_problem(n, m, s) for s, (n, m) in enumerate([(3, 5), (5, 2), (4, 4)])]
    R, C = 5, 5
    Ms = torch.zeros(3, R, C, dtype=torch.float64)
    As = torch.zeros(3, R, R, dtype=torch.float64)
    Bs = torch.zeros(3, C, C, dtype=torch.float64)
    a_s = torch.zeros(3, R, dtype=torch.float64)
    b_s = torch.zeros(3, C, dtype=torch.float64)
    for k, (M, A, B, a, b) in enumerate(probs):
        n, m = M.shape
        Ms[k, :n, :m], As[k, :n, :n], Bs[k, :m, :m], a_s[k, :n], b_s[k, :m] = M, A, B, a, b
    batched = fgw(Ms, As, Bs, a_s, b_s, edge_loss="l1")
    for k, (M, A, B, a, b) in enumerate(probs):
        n, m = M.shape
        single = fgw(M, A, B, a, b, edge_loss="l1")
        torch.testing.assert_close(batched.plan[k, :n, :m], single.plan, atol=1e-8, rtol=0)
        assert batched.plan[k, n:].abs().sum() == 0 and batched.plan[k, :, m:].abs().sum() == 0


def test_bad_shapes_raise():
    M, A, B, a, b = _problem(3, 4, 0)
    with pytest.raises(ValueError, match="shape mismatch"):
        fgw(M, B, A, a, b)


def test_without_structure_it_is_entropic_ot_against_pot():
    # beta = 0: no linearisation, one Sinkhorn solve of M (POT's log-domain Sinkhorn).
    M, A, B, a, b = _problem(6, 4, 3)
    ours = fgw(M, A, B, a, b, beta=0.0, reg=0.1)
    T = ot.bregman.sinkhorn_log(a, b, M, 0.1, numItermax=10_000, stopThr=1e-14)
    torch.testing.assert_close(ours.plan, T, atol=1e-9, rtol=0)
    assert ours.iterations == 1


@pytest.mark.filterwarnings("ignore:Solver failed")
def test_l1_edge_loss_is_the_square_loss_on_binary_structure_against_pot():
    # x + y - 2xy = (x - y)^2 for x, y in {0, 1}: POT's square loss is the oracle.
    beta, reg = 0.5, 0.2
    M, A, B, a, b = _problem(4, 5, 4, soft=False)
    ours = fgw(M, A, B, a, b, beta=beta, reg=reg, edge_loss="l1", max_outer=500)
    T = ot.gromov.entropic_fused_gromov_wasserstein(
        M, A, B, a, b, loss_fun="square_loss", epsilon=reg / (1 + beta),
        alpha=beta / (1 + beta), symmetric=False, G0=torch.outer(a, b), max_iter=2000,
        tol=1e-14, numItermax=10_000, stopThr=1e-15,
    )
    torch.testing.assert_close(ours.plan, T, atol=1e-6, rtol=0)


def test_result_fields_marginals_and_dtype():
    M, A, B, a, b = _problem(5, 3, 5)
    res = fgw(M, A, B, a, b, beta=0.5, reg=0.1, reg_init=1.0)
    f, g = res.potentials
    assert f is res.f and g is res.g and f.shape == (5,) and g.shape == (3,)
    assert res.iterations == res.outer_iter > 1  # annealing steps + stationary + final
    torch.testing.assert_close(res.plan.sum(1), a, atol=1e-9, rtol=0)
    torch.testing.assert_close(res.plan.sum(0), b, atol=1e-9, rtol=0)
    assert not res.plan.requires_grad
    single = fgw(M.float(), A.float(), B.float(), a.float(), b.float(), beta=0.5, reg=0.1)
    assert single.plan.dtype == torch.float32 and single.cost.shape == (5, 3)


def test_bad_options_raise():
    M, A, B, a, b = _problem(3, 4, 0)
    with pytest.raises(ValueError, match="reg must be > 0"):
        fgw(M, A, B, a, b, reg=0.0)
    with pytest.raises(ValueError, match="edge_loss"):
        fgw(M, A, B, a, b, edge_loss="l2")
    with pytest.raises(ValueError, match=r"M must have shape \[n, m\] or \[B, n, m\]"):
        fgw(M[0], A, B, a, b)
    with pytest.raises(ValueError, match="at least one row"):
        fgw(M[:0], A[:0, :0], B, a[:0], b)


def test_the_non_convergence_warning_points_at_the_caller():
    M, A, B, a, b = _problem(5, 4, 1)
    with pytest.warns(RuntimeWarning, match="did not converge") as caught:
        fgw(M, A, B, a, b, beta=0.7, reg=0.2, max_outer=1, max_iter=2)
    g = Data(x=torch.eye(3, dtype=torch.float64), edge_index=torch.tensor([[0, 1], [1, 2]]))
    h = Data(x=torch.eye(3, dtype=torch.float64)[[1, 0]], edge_index=torch.tensor([[0], [1]]))
    with pytest.warns(RuntimeWarning, match="did not converge") as caught_loss:
        structural_loss(g, h, max_outer=1, max_iter=2)
    for w in (caught[0], caught_loss[0]):
        assert w.filename == __file__
