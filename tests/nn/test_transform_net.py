"""GraphTransformNet: shapes, the canvas, exact end-to-end gradients, decoding, compile."""

import inspect

import pytest
import torch
from torch_geometric.data import Batch

from pyg_grapheme import text_to_graph
from pyg_grapheme.loss import segmentation_nll, structural_loss
from pyg_grapheme.nn import GraphTransformNet, one_hot_bytes
from pyg_grapheme.nn.transform_net import chain_edges, decode_graphs, topological_order
from tests.conftest import DEVICES

QUESTIONS = ["What colour is the sky?", "How many legs?", "caf\u00e9 \U0001F431", "a"]
ANSWERS = ["blue", "4", "oui", "bbbbbb"]  # the last answer is longer than its question


def small_net(**kw):
    torch.manual_seed(0)
    return GraphTransformNet(hidden=16, heads=2, max_answer_length=8, **kw)


def batches():
    inputs = Batch.from_data_list([text_to_graph(q) for q in QUESTIONS])
    targets = Batch.from_data_list([text_to_graph(a) for a in ANSWERS])
    return inputs, targets


#: the default network's alignment, which the likelihood must share
DEFAULT_ALIGN = inspect.signature(GraphTransformNet).parameters["canvas_align"].default


def seg_loss(pred, targets, align=DEFAULT_ALIGN):
    return segmentation_nll(pred.canvas_log_probs, pred.canvas_batch, pred.merge_logit,
                            targets.x, targets.batch, targets.num_graphs, align=align)


def test_output_is_a_chain_batch_the_losses_accept():
    net = small_net()
    inputs, targets = batches()
    pred = net(inputs)
    T = net.max_answer_length
    assert pred.num_graphs == len(QUESTIONS)
    assert pred.x.shape[1:] == (8, 256)
    assert torch.allclose(pred.x.sum(-1), torch.ones(pred.x.shape[:2]))
    assert pred.canvas_log_probs.shape == (T * len(QUESTIONS), 8, 256)
    assert pred.merge_logit.shape == ((T - 1) * len(QUESTIONS),)
    assert pred.cluster.shape == (T * len(QUESTIONS),)
    src, dst = pred.edge_index
    assert bool((dst == src + 1).all())  # contiguous merges: again a chain
    assert torch.isfinite(structural_loss(pred, one_hot_bytes(targets)))
    assert torch.isfinite(seg_loss(pred, targets))


def test_answers_can_be_longer_than_their_questions():
    """The canvas, not the question, bounds the answer: with no merges (threshold near 1)
    a one-grapheme question gets max_answer_length nodes."""
    net = small_net(pool_threshold=1 - 1e-6)
    pred = net(Batch.from_data_list([text_to_graph("a")]))
    assert pred.num_nodes == net.max_answer_length > 1


@pytest.mark.parametrize("block", ["gps", "pre_ln"])
def test_every_parameter_gets_a_finite_nonzero_gradient(block):
    net = small_net(block=block)
    if block == "pre_ln":
        # The message-passing gates start at 0 (the branch's weights get no gradient
        # until they open); the gates themselves do.
        inputs, targets = batches()
        seg_loss(net(inputs), targets).backward()
        gates = [p for n, p in net.named_parameters() if n.endswith("gate")]
        assert len(gates) == 4 and all(g.grad.abs().sum() > 0 for g in gates)
        net.zero_grad()
        with torch.no_grad():
            for g in gates:
                g.fill_(0.5)
    inputs, targets = batches()
    seg_loss(net(inputs), targets).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, f"{name} gets no gradient"
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} has a zero gradient"
    assert net.theta.grad.abs() > 0


@pytest.mark.parametrize("block", ["gps", "pre_ln"])
def test_end_to_end_gradient_matches_finite_differences(block):
    """The segmentation likelihood sums over every merge pattern, so the loss is smooth in
    every weight (no decision to hold fixed): autograd agrees with central differences."""
    net = small_net(block=block).double()
    inputs, targets = batches()

    def loss():
        return seg_loss(net(inputs), targets)

    if block == "gps":
        layers = ["enc.0.conv.lin_fwd.weight", "enc.1.attn.in_proj_weight",
                  "local.1.lin_bwd.weight"]
    else:
        with torch.no_grad():  # open the message-passing gates (they start at 0)
            for name, p in net.named_parameters():
                if name.endswith("gate"):
                    p.fill_(0.5)
        layers = ["enc.0.local.conv.lin_fwd.weight", "enc.0.local.gate",
                  "enc.1.attn.self_attn.in_proj_weight", "local.1.conv.lin_bwd.weight"]
    names = ["encoder.byte_emb.weight", "encoder.pos_emb.weight", *layers,
             "slots.weight", "dec.0.multihead_attn.in_proj_weight",
             "pool.proj.weight", "pool.theta", "head.lin2.bias"]
    net.zero_grad()
    loss().backward()
    params = dict(net.named_parameters())
    gen = torch.Generator().manual_seed(0)
    for name in names:
        p = params[name]
        flat = p.detach().view(-1)
        for idx in torch.randperm(flat.numel(), generator=gen)[:2].tolist():
            g = p.grad.view(-1)[idx].item()
            h = 1e-6
            with torch.no_grad():
                flat[idx] += h
                up = loss().item()
                flat[idx] -= 2 * h
                down = loss().item()
                flat[idx] += h
            fd = (up - down) / (2 * h)
            assert fd == pytest.approx(g, rel=1e-4, abs=1e-9), (name, idx, fd, g)


def test_generate_is_deterministic_and_refuses_bad_questions():
    net = small_net()
    a = net.generate(QUESTIONS)
    assert a == net.generate(QUESTIONS) and all(isinstance(s, str) for s in a)
    assert net.generate(QUESTIONS[-1]) == a[-1]
    assert net.generate([]) == []
    with pytest.raises(ValueError, match="question 1 is empty"):
        net.generate(["x", ""])
    assert net.training  # generate restores the mode
    net.max_input_length = 5
    with pytest.raises(ValueError, match="max_input_length=5"):
        net.generate("a question of more than five graphemes")


def test_decoding_reads_topological_order_and_survives_bad_bytes():
    assert topological_order(4, torch.tensor([[2, 0, 1], [3, 1, 2]])) == [0, 1, 2, 3]
    assert topological_order(3, torch.tensor([[2], [0]])) == [1, 2, 0]
    x = torch.zeros(3, 8, 256)
    for i, byte in enumerate([ord("h") + 1, 0xFF, ord("i") + 1]):  # 0xFE: never UTF-8
        x[i, 0, byte] = 1
        x[i, 1:, 0] = 1
    pred = Batch(x=x, edge_index=torch.tensor([[0, 1], [1, 2]]), batch=torch.zeros(3).long())
    pred._num_graphs = 1
    assert decode_graphs(pred) == ["h\ufffdi"]


def test_chain_edges_stay_inside_graphs():
    batch = torch.tensor([0, 0, 0, 1, 2, 2])
    assert chain_edges(batch).tolist() == [[0, 1, 4], [1, 2, 5]]


def test_num_out_forces_each_answer_length_and_log_prob_trains_theta():
    net = small_net()
    inputs, _ = batches()
    want = torch.tensor([4, 1, 3, 6])
    pred = net(inputs, num_out=want)
    assert torch.bincount(pred.batch, minlength=len(QUESTIONS)).tolist() == want.tolist()
    (-pred.log_prob.mean()).backward()
    assert net.theta.grad.abs() > 0
    # The cuts are the model's own least likely merges: forcing the count it picks
    # unaided gives the same segmentation.
    with torch.no_grad():
        free = net(inputs)
        forced = net(inputs, num_out=torch.bincount(free.batch, minlength=len(QUESTIONS)))
    assert torch.equal(forced.cluster, free.cluster)


@pytest.mark.parametrize("block", ["gps", "pre_ln"])
@pytest.mark.parametrize("device", DEVICES)
def test_runs_on_device_and_under_compile(device, block):
    net = small_net(block=block).to(device)
    inputs, targets = batches()
    inputs, targets = inputs.to(device), targets.to(device)
    eager = net(inputs)
    # aot_eager: dynamo and AOTAutograd trace the model (what breaks under compile)
    # without inductor's code generation, which costs minutes on a 2-core CPU.
    compiled = torch.compile(net, backend="aot_eager")
    out = compiled(inputs)
    assert torch.allclose(out.x, eager.x, atol=1e-5)
    seg_loss(out, targets).backward()
    assert torch.isfinite(net.theta.grad)


def test_canvas_scale_is_a_scaled_canvas_norm():
    """``canvas_scale=s`` equals the same weights with the canvas LayerNorm's affine
    parameters times ``s``: the canvas enters the decoder at that scale, nothing else."""
    torch.manual_seed(0)
    batch = Batch.from_data_list([text_to_graph(t) for t in ("12 + 3", "In 475, tens?")])
    scaled = GraphTransformNet(hidden=16, heads=2, max_answer_length=4, canvas_scale=0.02,
                               run_positions=8).eval()
    plain = GraphTransformNet(hidden=16, heads=2, max_answer_length=4, run_positions=8,
                              canvas_scale=1.0).eval()
    plain.load_state_dict(scaled.state_dict())
    with torch.no_grad():
        plain.canvas_norm.weight.mul_(0.02)
        plain.canvas_norm.bias.mul_(0.02)
    a, b = scaled(batch), plain(batch)
    assert torch.allclose(a.canvas_log_probs, b.canvas_log_probs, atol=1e-5)
    same_weights = GraphTransformNet(hidden=16, heads=2, max_answer_length=4,
                                     run_positions=8, canvas_scale=1.0).eval()
    same_weights.load_state_dict(scaled.state_dict())
    assert not torch.allclose(a.canvas_log_probs, same_weights(batch).canvas_log_probs,
                              atol=1e-3)
    with pytest.raises(ValueError, match="canvas_scale"):
        GraphTransformNet(canvas_scale=0.0)


@pytest.mark.parametrize("block,kw", [("gps", {}), ("pre_ln", {}),
                                      ("gps", dict(pool_proj_channels=None))])
def test_merge_logit_is_the_pools_score_of_the_canvas_bitwise(block, kw):
    """The output's ``merge_logit`` comes from the pool's selection, not a second scoring
    pass: it equals ``pool.merge_logits`` of the normalised canvas bit for bit, and the
    decisions are its sign. Without a projection the scores are standardised per
    question (``score_norm="graph"``): the logits the likelihood reads are those of each
    question's canvas, as the decisions' are (the second pass had pooled the batch)."""
    net = small_net(block=block, **kw)
    inputs, _ = batches()
    seen = {}
    net.dec_norm.register_forward_hook(lambda m, a, out: seen.setdefault("c", out))
    pred = net(inputs)
    T = net.max_answer_length
    from pyg_grapheme.nn.transform_net import canvas_chain
    cvec = torch.arange(len(QUESTIONS)).repeat_interleave(T)
    want = net.pool.merge_logits(seen["c"], canvas_chain(len(QUESTIONS), T), cvec)
    assert torch.equal(pred.merge_logit, want)
    assert torch.equal(pred.merged, pred.merge_logit > 0)
