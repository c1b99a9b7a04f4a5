"""GraphTransformNet under torch.compile: which graph breaks remain (and why), and that
the compiled model (AOT autograd; inductor in the slow run) gives eager's outputs and
gradients. Small shapes: dynamo's tracing, not the model's size, sets the time."""

import re

import pytest
import torch
from torch_geometric.data import Batch
from torch_geometric.nn import GPSConv
from torch_geometric.utils import cumsum, degree, to_dense_batch

from pyg_grapheme import text_to_graph
from pyg_grapheme.loss import segmentation_nll
from pyg_grapheme.nn import GraphTransformNet, PreNormGraphBlock
from pyg_grapheme.nn.blocks import from_dense_batch, gps_layer
from pyg_grapheme.nn.encoder import GraphemeEncoder, node_positions
from pyg_grapheme.nn.transform_net import canvas_chain, chain_edges
from tests.conftest import counting

QUESTIONS = ["What colour is the sky?", "How many legs?", "caf\u00e9 \U0001F431 12 345", "a"]
ANSWERS = ["blue", "4", "oui", "bbbbbb"]
# A second batch of other sizes (graphs, nodes, longest question, clusters).
QUESTIONS2 = ["In 475, which digit is in the tens place?", "7 + 8", "x"]
ANSWERS2 = ["7", "15", "yz"]

#: The one intended break, data-dependent by nature: the pool's connected components,
#: whose count sizes everything after the pool (``ThresholdMergePool.connect``, a
#: ``torch.compiler.disable`` method), called from ``tensor_forward``'s own frame. The
#: other size read from the data, the longest question (the dense attention pads every
#: question to it), is read in ``forward``, an eager frame (``recursive=False``) that calls
#: the compiled ``tensor_forward`` with it, and builds the output ``Batch`` (whose
#: metaclass call dynamo traces wrongly) after it: neither splits a graph.
INTENDED = {"ThresholdMergePool.connect"}
#: Graphs dynamo makes of one forward: before and after the break. Were the pool called
#: as a nested module (``self.pool(...)``) the break would split every frame of the call
#: stack (2 more; tests/nn/test_pool_api.py), and the longest question read inside the
#: frame one more: 5 graphs before.
MAX_GRAPHS = 2


def test_sized_layers_equal_their_size_reading_forms():
    """With the sizes passed, the layers give PyG's results bit for bit (output and
    input gradient): ``from_dense_batch`` selects the rows ``dense[mask]`` does."""
    inputs, _ = batches()
    vec, b = inputs.batch, inputs.num_graphs
    longest = int(degree(vec, b).max())
    x = torch.randn(vec.numel(), 16)
    dense, mask = to_dense_batch(x, vec, batch_size=b, max_num_nodes=longest)
    assert torch.equal(from_dense_batch(dense, vec, b, longest), x)
    torch.manual_seed(0)
    for layer in (gps_layer(16, 2), PreNormGraphBlock(16, 2, gate=0.5)):
        reference = layer  # called without the sizes: PyG's size-reading path
        if isinstance(layer, GPSConv):  # and PyG's own class, with the same weights
            reference = GPSConv(16, layer.conv, heads=2, act="gelu", norm="layer_norm",
                                norm_kwargs={"mode": "node"})
            reference.load_state_dict(layer.state_dict())
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        out1 = reference(x1, inputs.edge_index, vec)
        out2 = layer(x2, inputs.edge_index, vec, batch_size=b, max_num_nodes=longest)
        assert torch.equal(out1, out2)
        w = torch.randn_like(out1)
        (out1 * w).sum().backward()
        (out2 * w).sum().backward()
        assert torch.equal(x1.grad, x2.grad)


def test_sizes_from_pointers_equal_the_searched_ones():
    inputs, _ = batches()
    vec = inputs.batch
    ptr = cumsum(degree(vec, inputs.num_graphs, dtype=torch.long))
    assert torch.equal(ptr, inputs.ptr)
    n = vec.numel()
    assert torch.equal(node_positions(n, vec, ptr), node_positions(n, vec))
    enc = GraphemeEncoder(8, max_positions=4)
    with pytest.warns(UserWarning, match="max_positions=4"):
        searched = enc(inputs.x, vec)
    assert torch.equal(enc(inputs.x, vec, ptr), searched)  # clamped the same way
    cvec = torch.arange(3).repeat_interleave(5)
    assert torch.equal(canvas_chain(3, 5), chain_edges(cvec))
    assert canvas_chain(3, 1).shape == (2, 0)


def batches(questions=QUESTIONS, answers=ANSWERS):
    return (Batch.from_data_list([text_to_graph(q) for q in questions]),
            Batch.from_data_list([text_to_graph(a) for a in answers]))


def net_for(block: str, run_positions: int, training: bool) -> GraphTransformNet:
    torch.manual_seed(0)
    net = GraphTransformNet(hidden=16, heads=2, max_answer_length=8, block=block,
                            run_positions=run_positions, message_gate=0.5)
    return net.train(training)


def where(reason) -> str:
    """The function a break happened in, or the ``torch.compiler.disable``d one it calls."""
    called = re.search(r"<function ([\w.]+) at", reason.reason)
    return called.group(1) if called else reason.user_stack[-1].name


EXPLAIN_CASES = [  # (block, run_positions, training, forced count)
    ("gps", 32, True, True),  # the training path of the forced-count ablations
    ("pre_ln", 0, False, False),  # inference, threshold decides
]


def check_breaks(block: str, run_positions: int, training: bool, forced: bool) -> None:
    torch._dynamo.reset()
    inputs, targets = batches()
    kwargs = {"num_out": torch.tensor([2, 1, 3, 4])} if forced else {}
    explain = torch._dynamo.explain(net_for(block, run_positions, training))(inputs, **kwargs)
    reasons = [r.reason.splitlines()[0] for r in explain.break_reasons]
    assert len(reasons) == 1 and {where(r) for r in explain.break_reasons} == INTENDED, reasons
    assert explain.break_reasons[0].user_stack[-1].name == "tensor_forward"
    assert explain.graph_count == MAX_GRAPHS, (explain.graph_count, reasons)


@pytest.mark.parametrize(("block", "run_positions", "training", "forced"), EXPLAIN_CASES)
def test_only_intended_graph_breaks(block, run_positions, training, forced):
    """One break, the pool's components (there were 20-23, then 4): sizes come from
    shapes, PyG's pointers or the longest question read before the compiled frame.
    Fast: dynamo's explain, no code generation."""
    check_breaks(block, run_positions, training, forced)


@pytest.mark.slow
@pytest.mark.parametrize("block", ["gps", "pre_ln"])
@pytest.mark.parametrize("run_positions", [0, 32])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("forced", [True, False])
def test_only_intended_graph_breaks_every_path(block, run_positions, training, forced):
    check_breaks(block, run_positions, training, forced)


def test_size_checks_hold_under_compile():
    """``forward`` stays eager under compile: the longest question is checked against
    ``max_input_length`` (an error) and the position table (a warning) there, as in
    eager; the compiled frame sees plain tensors and ints."""
    torch._dynamo.reset()
    inputs, _ = batches()
    net = net_for("gps", 0, training=False)
    compiled = torch.compile(net, backend="eager")
    net.max_input_length = 5
    with pytest.raises(ValueError, match="max_input_length=5"):
        compiled(inputs)
    net.max_input_length, net.encoder.max_positions = 4096, 8
    with pytest.warns(UserWarning, match="max_positions=8"):
        pred = compiled(inputs)
    assert isinstance(pred, Batch) and pred.num_graphs == inputs.num_graphs
    assert torch.equal(pred.cluster, net(inputs).cluster)


def loss_of(pred, targets, align: str) -> torch.Tensor:
    """The training loss plus every differentiable output (masses, weights, log P)."""
    seg = segmentation_nll(pred.canvas_log_probs, pred.canvas_batch, pred.merge_logit,
                           targets.x, targets.batch, targets.num_graphs, align=align)
    w = torch.linspace(0.5, 2.0, pred.node_weight.numel())
    return (seg + pred.x.pow(2).sum() + (pred.node_weight * w).sum()
            + pred.edge_weight.sum() + pred.log_prob.sum())


def compiled_matches_eager(backend: str, block: str, run_positions: int, forced: bool,
                           atol: float, both_batches: bool = False) -> None:
    torch._dynamo.reset()
    net = net_for(block, run_positions, training=True)
    compile_graph, graphs = counting(backend)
    compiled = torch.compile(net, backend=compile_graph)
    params = list(net.parameters())
    pairs = [batches(), batches(QUESTIONS2, ANSWERS2)] if both_batches else [batches()]
    for i, (inputs, targets) in enumerate(pairs):
        kwargs = ({"num_out": torch.bincount(targets.batch, minlength=targets.num_graphs)}
                  if forced else {})
        outs, grads = [], []
        for model in (net, compiled):
            pred = model(inputs, **kwargs)
            outs.append(pred)
            grads.append(torch.autograd.grad(loss_of(pred, targets, net.canvas_align), params))
        eager, comp = outs
        # a batch of new sizes recompiles both graphs once (then with symbolic sizes)
        assert len(graphs) == MAX_GRAPHS * (i + 1), len(graphs)
        assert isinstance(comp, Batch) and comp.num_graphs == inputs.num_graphs
        for name in ("edge_index", "batch", "ptr", "cluster", "merged", "canvas_batch"):
            assert torch.equal(eager[name], comp[name]), name
        for name in ("x", "logits", "node_weight", "edge_weight", "merge_prob", "log_prob",
                     "merge_logit", "canvas_log_probs"):
            torch.testing.assert_close(comp[name], eager[name], rtol=atol, atol=atol)
        for p, a, b in zip(params, *grads, strict=True):
            torch.testing.assert_close(b, a, rtol=atol, atol=atol, msg=lambda m, p=p: (
                f"gradient of a {tuple(p.shape)} parameter: {m}"))


def test_aot_eager_matches_eager():
    """Dynamo and AOT autograd trace forward and backward as inductor would, without its
    code generation (minutes on a 2-core CPU), in two graphs (the one break): outputs and
    gradients as in eager. The
    training path of the forced-count ablations, with run positions; the slow run adds
    the other form and a second batch of other sizes (a recompile with dynamic shapes,
    about a minute more each)."""
    compiled_matches_eager("aot_eager", "gps", 32, forced=True, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(("block", "forced"), [("gps", True), ("pre_ln", False)])
def test_aot_eager_matches_eager_dynamic_sizes(block, forced):
    compiled_matches_eager("aot_eager", block, 32, forced=forced, atol=1e-5,
                           both_batches=True)


@pytest.mark.slow
@pytest.mark.parametrize("block", ["gps", "pre_ln"])
def test_inductor_matches_eager(block):
    """Inductor's fused float32 kernels reassociate sums: close, not equal."""
    compiled_matches_eager("inductor", block, 32, forced=block == "gps", atol=1e-4,
                           both_batches=True)
