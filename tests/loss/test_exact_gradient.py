"""Exact gradients at the defaults (issue 10), mixed precision and non-finite inputs (16).

The loss's gradient is the envelope gradient at the returned plan; it equals the
derivative of the loss itself only at a stationary point of the entropic FGW objective,
which the solver now reaches (float64 defaults: stationarity 1e-9, Sinkhorn 1e-11). The
finite differences below are of ``structural_loss`` itself, at its default arguments.
"""

import math
import warnings

import pytest
import torch
from torch_geometric.data import Batch, Data

from pyg_grapheme.loss import structural_loss


def _chain_edges(n: int) -> torch.Tensor:
    if n < 2:
        return torch.empty(2, 0, dtype=torch.long)
    return torch.stack([torch.arange(n - 1), torch.arange(1, n)])


def soft_chains(sizes, gen, shape=(4,), dtype=torch.float64):
    """Softmax features, edge weights in (0.1, 0.9), positive node masses."""
    out = []
    for n in sizes:
        ei = _chain_edges(n)
        out.append(Data(
            x=torch.randn(n, *shape, generator=gen, dtype=dtype).softmax(-1),
            edge_index=ei,
            edge_weight=torch.rand(ei.size(1), generator=gen, dtype=dtype) * 0.8 + 0.1,
            node_weight=torch.rand(n, generator=gen, dtype=dtype) * 0.8 + 0.4,
            num_nodes=n,
        ))
    return Batch.from_data_list(out)


def one_hot_chains(sizes, gen, shape=(4,), dtype=torch.float64):
    out = []
    for m in sizes:
        labels = torch.randint(0, shape[-1], (m, *shape[:-1]), generator=gen)
        x = torch.nn.functional.one_hot(labels, shape[-1]).to(dtype)
        out.append(Data(x=x, edge_index=_chain_edges(m), num_nodes=m))
    return Batch.from_data_list(out)


def _loss_of(pred, target, names, **kw):
    """``f(*leaves) -> loss`` with ``pred``'s fields ``names`` replaced by the leaves."""

    def f(*leaves):
        p = pred.clone()
        for name, leaf in zip(names, leaves, strict=True):
            p[name] = leaf
        return structural_loss(p, target, **kw)

    return f


# Mixed sizes with an empty graph and single nodes on both sides.
PRED_SIZES, TGT_SIZES = (3, 0, 1, 2, 4), (2, 1, 0, 1, 3)


@pytest.mark.parametrize("kw", [{}, {"beta": 0.0}, {"gamma": 0.0}, {"beta": 0.0, "gamma": 0.0}],
                         ids=["defaults", "no-edges", "no-clique", "node-only"])
def test_gradcheck_at_the_defaults_with_empty_and_single_node_graphs(kw):
    gen = torch.Generator().manual_seed(0)
    pred = soft_chains(PRED_SIZES, gen)
    target = one_hot_chains(TGT_SIZES, gen)
    names = ("x", "edge_weight", "node_weight")
    leaves = [pred[k].clone().requires_grad_() for k in names]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the solve must converge at the defaults
        # fast_mode: random projections (the full coordinate-wise check of the same
        # batch is the finite-difference test below, on byte-head features).
        assert torch.autograd.gradcheck(_loss_of(pred, target, names, **kw), leaves,
                                        eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)


def test_gradcheck_at_the_defaults_wrt_the_target_side():
    gen = torch.Generator().manual_seed(1)
    pred = soft_chains((2, 1, 3), gen)
    target = soft_chains((3, 2, 0), gen)

    def f(w, a):
        t = target.clone()
        t.edge_weight, t.node_weight = w, a
        return structural_loss(pred, t)

    leaves = [target.edge_weight.clone().requires_grad_(),
              target.node_weight.clone().requires_grad_()]
    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-7, rtol=1e-5)


def _rel_fd_error(f, leaves, gen, h=1e-6, directions=3):
    """Relative error of autograd against central differences of ``f`` itself, along
    random directions (features) or coordinate-wise (small tensors)."""
    out = []
    for i, v in enumerate(leaves):
        vs = [u.detach().clone().requires_grad_(j == i) for j, u in enumerate(leaves)]
        (grad,) = torch.autograd.grad(f(*vs), vs[i])

        def shifted(d, i=i):
            return [u.detach() + (h * d if j == i else 0) for j, u in enumerate(leaves)]

        if v.numel() <= 30:
            dirs = list(torch.eye(v.numel(), dtype=v.dtype).view(-1, *v.shape))
        else:
            dirs = [torch.randn(v.shape, generator=gen, dtype=v.dtype) for _ in range(directions)]
        fd = torch.stack([(f(*shifted(d)) - f(*shifted(-d))) / (2 * h) for d in dirs])
        an = torch.stack([(grad * d).sum() for d in dirs])
        out.append(float((an - fd).norm() / fd.norm()))
    return out


@pytest.mark.parametrize("beta", [0.5, 0.0])
def test_gradient_equals_finite_differences_of_the_loss_at_the_defaults(beta):
    # The measurement: byte-head features [N, 8, 256], float64, chains of 2-5
    # nodes against one-hot chains of 1-5 nodes (plus an empty and a 1-node graph).
    # Before the fix: 6.4e-2 (x) and 4.6e-2 (edge_weight); beta=0: 4.7e-4.
    gen = torch.Generator().manual_seed(2)
    pred = soft_chains((2, 5, 3, 0, 1), gen, shape=(8, 256))
    target = one_hot_chains((1, 5, 4, 2, 1), gen, shape=(8, 256))
    names = ("x", "edge_weight", "node_weight")
    f = _loss_of(pred, target, names, beta=beta)
    errs = _rel_fd_error(f, [pred[k] for k in names], gen)
    assert max(errs) < 1e-4, dict(zip(names, errs, strict=True))


def test_unconverged_solve_warns_once_and_keeps_gradients_finite():
    gen = torch.Generator().manual_seed(3)
    pred = soft_chains((4, 6, 2), gen)
    target = one_hot_chains((5, 3, 2), gen)
    pred.x.requires_grad_()
    pred.edge_weight.requires_grad_()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss = structural_loss(pred, target, max_outer=1, max_iter=3)
        loss.backward()
    msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(msgs) == 1, msgs
    assert "pair" in msgs[0] and "residual" in msgs[0]
    assert torch.isfinite(loss)
    assert torch.isfinite(pred.x.grad).all() and torch.isfinite(pred.edge_weight.grad).all()


def test_bf16_autocast_gives_finite_float32_values_and_gradients():
    gen = torch.Generator().manual_seed(4)
    pred = soft_chains((3, 5, 1, 0), gen, shape=(8, 16), dtype=torch.float32)
    target = one_hot_chains((4, 5, 2, 1), gen, shape=(8, 16), dtype=torch.float32)
    lin = torch.nn.Linear(16, 16)
    logits = torch.randn(pred.num_nodes, 8, 16, generator=gen)

    def run(autocast: bool):
        lin.zero_grad()
        p = pred.clone()
        p.edge_weight = p.edge_weight.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            p.x = lin(logits).softmax(-1)  # bf16 under autocast, as in a model's head
            loss = structural_loss(p, target)
        loss.backward()
        return loss, lin.weight.grad.clone(), p.edge_weight.grad

    loss16, gw16, ge16 = run(True)
    loss32, gw32, ge32 = run(False)
    assert loss16.dtype == torch.float32
    for t in (loss16, gw16, ge16):
        assert torch.isfinite(t).all()
    # Only the head's bf16 output differs (8 bits of mantissa).
    torch.testing.assert_close(loss16, loss32, rtol=2e-2, atol=2e-2)
    assert float((gw16 - gw32).norm() / gw32.norm()) < 0.1
    assert float((ge16 - ge32).norm() / ge32.norm()) < 0.1
    # The same float32 inputs give the same result with or without autocast.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = structural_loss(pred, target)
    torch.testing.assert_close(inside, structural_loss(pred, target))


@pytest.mark.parametrize("side,field,value", [
    ("pred", "x", math.nan), ("pred", "x", math.inf), ("target", "x", -math.inf),
    ("pred", "node_weight", math.nan), ("target", "node_weight", math.inf),
])
def test_non_finite_features_and_masses_raise(side, field, value):
    gen = torch.Generator().manual_seed(5)
    graphs = {"pred": soft_chains((3, 2), gen), "target": soft_chains((2, 2), gen)}
    bad = graphs[side][field].clone()
    bad.view(-1)[1] = value
    graphs[side][field] = bad
    with pytest.raises(ValueError, match=rf"{side}\.{field} must be finite"):
        structural_loss(graphs["pred"], graphs["target"])
