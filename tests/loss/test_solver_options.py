"""The FGW solver's iteration options are wired and validated: annealing lengths
(``outer_iter``, ``anneal_iter``) and Sinkhorn caps (``inner_iter``) change the path, not
the fixed point; a bad count is a clear error, also when ``StructuralLoss`` is built."""

import pytest
import torch
from torch_geometric.data import Batch, Data

from pyg_grapheme.loss import StructuralLoss, fgw, structural_loss
from tests.loss.test_fgw import _problem


def _batch(seed):
    g = torch.Generator().manual_seed(seed)

    def graph(n, e):
        x = torch.softmax(torch.randn(n, 5, generator=g, dtype=torch.float64), -1)
        return Data(x=x, edge_index=torch.randint(0, n, (2, e), generator=g),
                    edge_weight=torch.rand(e, generator=g, dtype=torch.float64))

    return Batch.from_data_list([graph(5, 6), graph(4, 5)])


def test_fgw_annealing_and_inner_caps_change_the_path_not_the_fixed_point():
    M, A, B, a, b = _problem(5, 4, 1)
    kw = {"beta": 0.5, "reg": 0.1}
    plain = fgw(M, A, B, a, b, **kw)
    # without reg_init nothing anneals, so outer_iter is inert; with it, it is not
    assert fgw(M, A, B, a, b, outer_iter=30, **kw).outer_iter == plain.outer_iter
    assert torch.equal(fgw(M, A, B, a, b, reg_init=1.0, outer_iter=0, **kw).plan, plain.plan)
    runs = [fgw(M, A, B, a, b, reg_init=1.0, **kw, **extra)
            for extra in ({"outer_iter": 20}, {"inner_iter": 1}, {"inner_iter": 200})]
    assert runs[0].outer_iter > plain.outer_iter  # ten annealing steps more
    for run in runs:
        assert float(run.residual.max()) < 1e-9
        torch.testing.assert_close(run.plan, plain.plan, atol=1e-7, rtol=0)


@pytest.mark.filterwarnings("ignore:structural_loss. the FGW solve did not converge")
def test_structural_loss_anneal_iter_is_wired():
    pred, target = _batch(0), _batch(1)
    values = {}
    for name, kw in {"none": {"reg_init": None}, "zero": {"anneal_iter": 0},
                     "eight": {"anneal_iter": 8}}.items():
        value, comps = structural_loss(pred, target, return_components=True, **kw)
        values[name] = (float(value), comps["outer_iter"])
    assert values["zero"] == values["none"]  # anneal_iter=0: no annealing at all
    assert values["eight"][1] != values["zero"][1]
    # FGW is not convex: annealing may end at a nearby stationary point (here 6e-6 apart)
    assert values["eight"][0] == pytest.approx(values["zero"][0], rel=1e-4)


@pytest.mark.parametrize("name, value", [("inner_iter", 0), ("max_iter", 0),
                                         ("outer_iter", -1), ("max_outer", -2),
                                         ("inner_iter", 2.5), ("max_iter", True)])
def test_bad_iteration_counts_raise(name, value):
    M, A, B, a, b = _problem(3, 4, 0)
    with pytest.raises(ValueError, match=f"{name} must be an integer >= "):
        fgw(M, A, B, a, b, **{name: value})
    with pytest.raises(ValueError, match=f"{name} must be an integer >= "):
        structural_loss(_batch(0), _batch(1), **{name: value})
    with pytest.raises(ValueError, match=f"{name} must be an integer >= "):
        StructuralLoss(**{name: value})  # at construction, before the first batch


def test_structural_loss_module_checks_its_options_when_built():
    with pytest.raises(ValueError, match="anneal_iter must be an integer >= 0"):
        StructuralLoss(anneal_iter=-1)
    with pytest.raises(ValueError, match="reduction"):
        StructuralLoss(reduction="total")
    with pytest.raises(TypeError, match=r"unknown option.*inner_iters"):
        StructuralLoss(inner_iters=5)
    loss = StructuralLoss(inner_iter=5, node_cost="nll")
    assert loss.kwargs == {"inner_iter": 5, "node_cost": "nll"}
