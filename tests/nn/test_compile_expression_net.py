"""ExpressionNet under torch.compile: one graph break, the pool's connected components,
and the compiled model (AOT autograd; inductor in the slow run) gives eager's outputs and
gradients. Small shapes: dynamo's tracing, not the model's size, sets the time."""

import re

import pytest
import torch
from torch_geometric.data import Batch

from pyg_grapheme.data.expression import expression_graph, parse_polish
from pyg_grapheme.data.graphemes import text_to_graph
from pyg_grapheme.loss import structural_loss
from pyg_grapheme.nn import ExpressionNet, one_hot_bytes
from tests.conftest import counting

QUESTIONS = ["(+ 3 4)", "(- (* 12 4) 5)", "(* 7 (+ 2 9))"]
# A second batch of other sizes (graphs, graphemes, longest question, tokens).
QUESTIONS2 = ["(+ 1 (* 2 3))", "(- 10 4)", "(* (+ 5 6) (- 8 7))", "(+ 9 0)"]

#: The one intended break: ``_connect_tokens``, the pool's connected components
#: (``ThresholdMergePool.connect``, ``torch.compiler.disable``d) and what their count sizes
#: (every pair of tokens, the most tokens in a question), called from ``tensor_forward``'s
#: own frame. ``forward`` is an eager frame (``recursive=False``) that reads the longest
#: question and builds the output ``Batch``. Before: 23 breaks (the pool called nested,
#: PyG's size-reading GPSConv and ``to_dense_batch``, ``all_pairs``, positions by search).
INTENDED = {"_connect_tokens"}
MAX_GRAPHS = 2  # before and after the break

#: (span_features, training, pool_threshold): the paths with their own code (span
#: features or not; stochastic-free training with the count estimator or evaluation;
#: a threshold that merges or one that keeps every grapheme a token).
CASES = [(True, True, 0.9), (False, False, 0.3)]


def inputs_for(questions=QUESTIONS) -> tuple[Batch, Batch]:
    targets = Batch.from_data_list([expression_graph(parse_polish(q)) for q in questions])
    return (Batch.from_data_list([text_to_graph(q) for q in questions]),
            one_hot_bytes(targets))


def net_for(span: bool, training: bool, threshold: float) -> ExpressionNet:
    torch.manual_seed(0)
    net = ExpressionNet(hidden=16, heads=2, token_layers=2, span_features=span,
                        pool_threshold=threshold)
    return net.train(training)


def where(reason) -> str:
    """The function a break happened in, or the ``torch.compiler.disable``d one it calls."""
    called = re.search(r"<function ([\w.]+) at", reason.reason)
    return called.group(1) if called else reason.user_stack[-1].name


def check_breaks(span: bool, training: bool, threshold: float) -> None:
    torch._dynamo.reset()
    inputs, _ = inputs_for()
    explain = torch._dynamo.explain(net_for(span, training, threshold))(inputs)
    reasons = [r.reason.splitlines()[0] for r in explain.break_reasons]
    assert len(reasons) == 1 and {where(r) for r in explain.break_reasons} == INTENDED, reasons
    assert explain.break_reasons[0].user_stack[-1].name == "tensor_forward"
    assert explain.graph_count == MAX_GRAPHS, (explain.graph_count, reasons)


def test_only_the_intended_graph_break():
    """Fast: dynamo's explain, no code generation. The other case is counted by
    :func:`test_aot_eager_matches_eager` (its graphs) and here in the slow run."""
    check_breaks(*CASES[1])


@pytest.mark.slow
@pytest.mark.parametrize(("span", "training", "threshold"), CASES)
def test_only_the_intended_graph_break_every_case(span, training, threshold):
    check_breaks(span, training, threshold)


def test_length_warning_holds_under_compile():
    """The longest question is checked against the position table in the eager frame."""
    torch._dynamo.reset()
    inputs, _ = inputs_for()
    net = net_for(True, False, 0.9)
    net.encoder.max_positions = 8
    with pytest.warns(UserWarning, match="max_positions=8"):
        pred = torch.compile(net, backend="eager")(inputs)
    assert isinstance(pred, Batch) and pred.num_graphs == inputs.num_graphs
    assert torch.equal(pred.cluster, net(inputs).cluster)


def loss_of(pred: Batch, targets: Batch) -> torch.Tensor:
    """The training loss (FGW structural loss) plus every differentiable output."""
    loss = structural_loss(pred, targets, alpha=1.0, beta=1.0, gamma=0.0, node_cost="nll")
    for name in ("x", "node_weight", "keep", "edge_weight", "edge_logit", "merge_prob"):
        w = torch.linspace(0.5, 2.0, pred[name].numel()).view_as(pred[name])
        loss = loss + (pred[name] * w).sum()
    return loss


def compiled_matches_eager(backend: str, span: bool, training: bool, threshold: float,
                           atol: float, both_batches: bool = False) -> None:
    torch._dynamo.reset()
    net = net_for(span, training, threshold)
    compile_graph, graphs = counting(backend)
    compiled = torch.compile(net, backend=compile_graph)
    params = list(net.parameters())
    pairs = [inputs_for(), inputs_for(QUESTIONS2)] if both_batches else [inputs_for()]
    for i, (inputs, targets) in enumerate(pairs):
        outs, grads = [], []
        for model in (net, compiled):
            pred = model(inputs)
            outs.append(pred)
            grads.append(torch.autograd.grad(loss_of(pred, targets), params,
                                             allow_unused=True))
        eager, comp = outs
        assert len(graphs) == MAX_GRAPHS * (i + 1), len(graphs)  # new sizes: once more
        assert isinstance(comp, Batch) and comp.num_graphs == inputs.num_graphs
        for name in ("edge_index", "batch", "ptr", "pos", "cluster", "merged"):
            assert torch.equal(eager[name], comp[name]), name
        for name in ("x", "logits", "node_weight", "keep", "edge_weight", "edge_logit",
                     "merge_prob"):
            torch.testing.assert_close(comp[name], eager[name], rtol=atol, atol=atol)
        for p, a, b in zip(params, *grads, strict=True):
            assert (a is None) == (b is None)
            if a is not None:  # float32 sums reassociated: close on the gradient's scale
                scale = max(1.0, float(a.abs().max()))
                torch.testing.assert_close(b, a, rtol=atol, atol=atol * scale,
                                           msg=lambda m, p=p: (
                                               f"gradient of a {tuple(p.shape)} parameter: {m}"))


def test_aot_eager_matches_eager():
    """Dynamo and AOT autograd trace forward and backward as inductor would, without its
    code generation: outputs and gradients as in eager, in two graphs (the one break)."""
    compiled_matches_eager("aot_eager", *CASES[0], atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(("span", "training", "threshold"), CASES)
def test_aot_eager_matches_eager_dynamic_sizes(span, training, threshold):
    compiled_matches_eager("aot_eager", span, training, threshold, atol=1e-5,
                           both_batches=True)


@pytest.mark.slow
@pytest.mark.parametrize(("span", "training", "threshold"), CASES)
def test_inductor_matches_eager(span, training, threshold):
    """Inductor's fused float32 kernels reassociate sums: close, not equal."""
    compiled_matches_eager("inductor", span, training, threshold, atol=1e-4,
                           both_batches=True)
