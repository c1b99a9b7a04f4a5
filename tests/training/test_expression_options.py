"""ExpressionModule's hard-graph options (integral masses, the binarisation penalty) and
its decoders (trees, DAGs: predict with experiments/dag.yaml decodes DAG text)."""

import warnings

import pytest
import torch
from torch import nn
from torch_geometric.data import Batch, Data
from torch_geometric.loader import DataLoader

from pyg_grapheme.data.dag import dag_pairs
from pyg_grapheme.data.expression import expression_pairs
from pyg_grapheme.data.graphemes import graphs_to_texts, text_to_graph
from pyg_grapheme.data.pair import FOLLOW_BATCH, split_pair_batch
from pyg_grapheme.nn import ExpressionNet
from pyg_grapheme.nn.edge_head import all_pairs
from pyg_grapheme.nn.head import one_hot_bytes
from pyg_grapheme.training.expression_module import (
    ExpressionModule,
    binarize_penalty,
    score_expressions,
)


def _batch(pairs):
    return next(iter(DataLoader(pairs, batch_size=len(pairs), follow_batch=FOLLOW_BATCH)))


def _perfect(targets: Batch) -> Batch:
    """The targets as a prediction (keep 1, every ordered pair scored 0/1)."""
    pairs = all_pairs(targets.batch)
    edges = set(map(tuple, targets.edge_index.t().tolist()))
    weight = torch.tensor([float(tuple(p) in edges) for p in pairs.t().tolist()])
    pred = Batch(x=one_hot_bytes(targets).x, keep=torch.ones(targets.num_nodes),
                 edge_index=pairs, edge_weight=weight, batch=targets.batch)
    pred._num_graphs = targets.num_graphs
    return pred


class _Oracle(nn.Module):
    """Answers each question with its target graph (looked up by the question text)."""

    def __init__(self, pairs) -> None:
        super().__init__()
        self.targets = {}
        for p in pairs:
            inputs, target = split_pair_batch(_batch([p]))
            self.targets[graphs_to_texts(inputs)[0]] = Data(
                x=target.x, edge_index=target.edge_index, num_nodes=target.num_nodes)

    def forward(self, inputs: Batch) -> Batch:
        targets = Batch.from_data_list(
            [self.targets[q] for q in graphs_to_texts(inputs)])
        return _perfect(targets)


def test_binarize_penalty_values_and_gradcheck_float64():
    keep = torch.tensor([0.0, 1.0, 0.5, 0.2, 0.9], dtype=torch.float64)
    batch = torch.tensor([0, 0, 1, 1, 1])
    assert binarize_penalty(keep, batch, 2).item() == pytest.approx((0.25 + 0.16 + 0.09) / 2)
    assert binarize_penalty(keep[:2], batch[:2], 1).item() == 0.0
    k = torch.tensor([0.1, 0.33, 0.6, 0.8], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x: binarize_penalty(x, torch.tensor([0, 0, 0, 1]), 2), (k,))


def test_a_split_is_unstable_under_the_penalty():
    """Concave: of two gates sharing a node's mass, the larger one is pushed down less."""
    k = torch.tensor([0.34, 0.33, 0.33], requires_grad=True)
    binarize_penalty(k, torch.zeros(3, dtype=torch.long), 1).backward()
    assert k.grad[0] < k.grad[1] == k.grad[2]


def test_dag_decoder_scores_and_predicts_dag_text():
    pairs = dag_pairs(1, "val", sizes=(0, 4, 0)) + dag_pairs(2, "val", sizes=(0, 4, 0))
    inputs, targets = split_pair_batch(_batch(pairs))
    questions = graphs_to_texts(inputs)
    exact, texts = score_expressions(_perfect(targets), targets, decoder="dag")
    assert exact == [True] * 8 and texts == questions
    # trees decode a DAG to something else: the decoder matters
    assert score_expressions(_perfect(targets), targets)[1] != questions
    module = ExpressionModule(_Oracle(pairs), decoder="dag")
    batch = Batch.from_data_list([text_to_graph(q) for q in questions])
    assert module.predict_step(batch, 0) == questions
    assert ExpressionModule(_Oracle(pairs)).predict_step(batch, 0) != questions


def test_bad_options_raise_naming_them():
    with pytest.raises(ValueError, match="decoder"):
        ExpressionModule(decoder="graph")
    with pytest.raises(ValueError, match="binarize_weight"):
        ExpressionModule(binarize_weight=-1.0)
    with pytest.raises(ValueError, match="edge_ce_weight"):
        ExpressionModule(edge_ce_weight=-1.0)
    with pytest.raises(ValueError, match="binarize_after"):
        ExpressionModule(binarize_after=-1)
    with pytest.raises(ValueError, match="integral_mass_after"):
        ExpressionModule(integral_mass_after=-1)
    with pytest.raises(ValueError, match="decoder"):
        score_expressions(None, None, decoder="graph")


class _Trainer:
    def __init__(self, step: int) -> None:
        self.global_step = step


@pytest.mark.parametrize("integral", [False, True])
def test_training_step_with_the_options_is_finite(integral, monkeypatch):
    torch.manual_seed(0)
    module = ExpressionModule(ExpressionNet(hidden=16, heads=2), beta=0.3,
                              integral_mass=integral, integral_mass_after=2,
                              binarize_weight=0.5, binarize_after=2, edge_ce_weight=0.5)
    logged = {}
    monkeypatch.setattr(module, "log", lambda k, v, **kw: logged.__setitem__(k, v))
    # training statistics go through log_step_stats (self.log once an epoch)
    monkeypatch.setattr(module, "log_step_stats",
                        lambda stage, stats, n, **_: logged.update(stats))
    batch = _batch(expression_pairs(1, "train", sizes=(8, 0, 0)))
    for step in (0, 5):
        monkeypatch.setattr(type(module), "global_step", property(lambda self, s=step: s))
        assert module._integral() == (integral and step >= 2)
        loss = module.training_step(batch, 0)
        assert torch.isfinite(loss)
        module.zero_grad()
        loss.backward()
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        assert grads and all(bool(torch.isfinite(g).all()) for g in grads)
        assert module.model.keep.weight.grad.abs().sum() > 0
        if step >= 2:
            assert float(logged["train_binarize"].detach()) > 0
        else:
            assert "train_binarize" not in logged
        assert float(logged["train_edge_cross_entropy"].detach()) > 0


def test_edge_head_natural_gradient_keeps_values_and_revives_saturated_edges():
    from pyg_grapheme.nn import EdgeHead

    torch.manual_seed(0)
    x, batch = torch.randn(5, 8), torch.tensor([0, 0, 0, 1, 1])
    plain, natural = EdgeHead(8, bias_init=-30.0), EdgeHead(8, bias_init=-30.0,
                                                            natural_gradient=True)
    natural.load_state_dict(plain.state_dict())
    assert "natural_gradient=True" in repr(natural)
    up = torch.linspace(-1.0, 1.0, 8)  # dL/dw per pair
    grads = []
    for head in (plain, natural):
        out = head(x, batch)
        assert out.edge_weight.shape == (8,) and float(out.edge_weight.max()) < 1e-12
        (out.edge_weight * up).sum().backward()
        grads.append(head.out.bias.grad.item())
    a, b = plain(x, batch), natural(x, batch)
    assert torch.equal(a.edge_weight, b.edge_weight)
    assert abs(grads[0]) < 1e-10  # the sigmoid has saturated
    assert grads[1] == pytest.approx(float(up.sum()))  # dL/ds = dL/dw, summed into c


@pytest.mark.parametrize("warn", [False, True])
def test_unconverged_solves_are_logged_and_warn_only_when_asked(warn, monkeypatch):
    torch.manual_seed(0)
    module = ExpressionModule(ExpressionNet(hidden=16, heads=2), warn_unconverged=warn,
                              reg=0.01)  # a small reg leaves some pairs unconverged
    logged = {}
    monkeypatch.setattr(module, "log", lambda k, v, **kw: logged.__setitem__(k, v))
    # training statistics go through log_step_stats (self.log once an epoch)
    monkeypatch.setattr(module, "log_step_stats",
                        lambda stage, stats, n, **_: logged.update(stats))
    batch = _batch(expression_pairs(2, "train", sizes=(16, 0, 0)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module.training_step(batch, 0)
    fraction = float(logged["train_fgw_unconverged"])
    assert fraction > 0
    assert any("did not converge" in str(w.message) for w in caught) == warn


def test_plan_edge_cross_entropy_targets_the_plan_and_revives_saturated_edges():
    from pyg_grapheme.loss import structural_loss
    from pyg_grapheme.training.expression_module import plan_edge_cross_entropy

    pairs = dag_pairs(1, "val", sizes=(0, 3, 0)) + expression_pairs(2, "val")[:2]
    _, targets = split_pair_batch(_batch(pairs))
    pred = _perfect(targets)
    pred.ptr = targets.ptr
    truth = pred.edge_weight.clone()
    # every edge saturated at 0: the l1 edge term's score gradient vanishes, the CE's not
    logit = torch.full_like(truth, -30.0, dtype=torch.float64).requires_grad_()
    pred.edge_weight = torch.sigmoid(logit).float()
    pred.edge_logit = logit
    _, parts = structural_loss(pred, one_hot_bytes(targets), beta=0.3, gamma=0.0,
                               node_cost="nll", return_components=True)
    ce = plan_edge_cross_entropy(parts["plan"], pred, targets)
    (grad,) = torch.autograd.grad(ce, logit)
    B = targets.num_graphs
    # d/ds = a_i a_k (sigma(s) - q) / B with unit masses and the sharp plan: q = truth
    assert torch.allclose(grad * B, torch.sigmoid(logit.detach()) - truth.double(),
                          atol=1e-3)
    assert bool((grad[truth > 0] < -0.9 / B).all())
    s0 = torch.linspace(-2.0, 2.0, truth.numel(), dtype=torch.float64).requires_grad_()

    def f(s):
        pred.edge_logit = s
        return plan_edge_cross_entropy(parts["plan"].double(), pred, targets)

    assert torch.autograd.gradcheck(f, (s0,))
