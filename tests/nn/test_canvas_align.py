"""GraphTransformNet(canvas_align=...): which canvas node of a segment speaks, and the
likelihood GraphemeModule trains it with."""

import pytest
import torch
from torch_geometric.data import Batch
from torch_geometric.loader import DataLoader

from pyg_grapheme import text_to_graph
from pyg_grapheme.data import FOLLOW_BATCH, PairData, split_pair_batch
from pyg_grapheme.loss import segmentation_nll
from pyg_grapheme.loss.segmentation import reverse_within_graphs
from pyg_grapheme.nn import GraphTransformNet
from pyg_grapheme.nn.relative_position import relative_buckets
from pyg_grapheme.training import GraphemeModule

PAIRS = [("(+ 7 5)", "12"), ("(* (- 2 4) 4)", "-8"), ("ab", "xyz"), ("7", "7")]


def _pair_batch():
    """The PAIRS as one batch of pair graphs, and its question and answer halves."""
    batch = next(iter(DataLoader([PairData.from_texts(q, a) for q, a in PAIRS],
                                 batch_size=len(PAIRS), follow_batch=FOLLOW_BATCH)))
    return batch, *split_pair_batch(batch)


def _net(align: str) -> GraphTransformNet:
    torch.manual_seed(0)
    net = GraphTransformNet(hidden=16, heads=2, max_answer_length=6, canvas_align=align,
                            pool_threshold=0.5).eval()
    return net


@pytest.mark.parametrize("align", ["left", "right"])
def test_each_segment_speaks_with_its_aligned_end(align):
    net = _net(align)
    batch = Batch.from_data_list([text_to_graph(q) for q, _ in PAIRS])
    with torch.no_grad():
        net.pool.theta.fill_(0.0)  # a threshold that merges some neighbours, not all
        pred = net(batch)
    cluster = pred.cluster
    assert 0 < pred.x.size(0) < cluster.numel()  # some segments have several nodes
    for k in range(pred.x.size(0)):
        nodes = (cluster == k).nonzero().view(-1)
        assert (nodes.diff() == 1).all()  # contiguous
        speaker = nodes.min() if align == "left" else nodes.max()
        torch.testing.assert_close(pred.logits[k], pred.canvas_log_probs[speaker])


def test_the_module_trains_each_alignment_with_its_own_likelihood():
    batch, inputs, targets = _pair_batch()
    values = {}
    for align in ("left", "right"):
        module = GraphemeModule(_net(align).train())
        loss, pred, _ = module._step(batch, "val")
        want = segmentation_nll(pred.canvas_log_probs, pred.canvas_batch, pred.merge_logit,
                                targets.x, targets.batch, len(PAIRS), align=align)
        torch.testing.assert_close(loss, want)
        values[align] = loss.item()
    assert abs(values["left"] - values["right"]) > 1e-3


def test_right_alignment_learns_to_answer():
    """A few hundred steps on four pairs: the right-aligned model's decoded answers are
    the targets (the speaker and the likelihood agree; with the left speaker under the
    right likelihood the decoded answers come out misaligned)."""
    batch, inputs, targets = _pair_batch()
    net = _net("right").train()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    module = GraphemeModule(net)
    for _ in range(300):
        loss, _, _ = module._step(batch, "train")
        opt.zero_grad()
        loss.backward()
        opt.step()
    questions = [q for q, _ in PAIRS]
    assert net.generate(questions) == [a for _, a in PAIRS]
    net.canvas_align = "left"  # the other end of each segment speaks
    assert net.generate(questions) != [a for _, a in PAIRS]


def test_bad_alignment():
    with pytest.raises(ValueError, match="canvas_align"):
        GraphTransformNet(hidden=16, heads=2, canvas_align="centre")


def test_right_alignment_under_compile_equals_eager():
    torch._dynamo.reset()
    net = _net("right").train()
    batch, inputs, targets = _pair_batch()
    params = list(net.parameters())
    outs, grads = [], []
    for model in (net, torch.compile(net, backend="aot_eager")):
        pred = model(inputs)
        loss = segmentation_nll(pred.canvas_log_probs, pred.canvas_batch, pred.merge_logit,
                                targets.x, targets.batch, len(PAIRS), align="right")
        outs.append(pred)
        grads.append(torch.autograd.grad(loss + pred.x.pow(2).sum(), params))
    torch.testing.assert_close(outs[1].logits, outs[0].logits)
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def _mirrored_state(net: GraphTransformNet) -> dict:
    """``net``'s parameters relabelled for the mirrored canvas: slot k <-> slot T-1-k,
    the canvas messages along <-> against its edges, relative distance d <-> -d."""
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state["slots.weight"] = state["slots.weight"].flip(0)
    for i in range(len(net.local)):
        fwd, bwd = f"local.{i}.lin_fwd.weight", f"local.{i}.lin_bwd.weight"
        state[fwd], state[bwd] = state[bwd], state[fwd]
    T = net.max_answer_length
    d = torch.arange(-(T - 1), T)
    for i, rel in enumerate(net.canvas_relative):
        table = state[f"canvas_relative.{i}.bias.weight"]
        mirrored = table.clone()
        mirrored[relative_buckets(d, rel.num_buckets, rel.max_distance)] = \
            table[relative_buckets(-d, rel.num_buckets, rel.max_distance)]
        state[f"canvas_relative.{i}.bias.weight"] = mirrored
    return state


def test_right_alignment_is_the_left_model_read_backwards():
    """With its parameters relabelled (mirrored slots, message directions and relative
    distances), the right-aligned model is the left-aligned one on the reversed canvas:
    the same canvas distributions and merge logits read backwards, the same likelihood of
    each answer as the left model's of the reversed answer, and so the same learning
    problem (on a one-grapheme answer the two are one model: the speaker starts as a copy
    of the question's first grapheme either way)."""
    kw = dict(hidden=16, heads=2, max_answer_length=6, pool_threshold=0.5,
              canvas_relative_positions=8)
    torch.manual_seed(0)
    left = GraphTransformNet(**kw, canvas_align="left").eval()
    right = GraphTransformNet(**kw, canvas_align="right").eval()
    right.load_state_dict(_mirrored_state(left))
    _, inputs, targets = _pair_batch()
    with torch.no_grad():
        # A threshold at the median merge logit: some neighbours merge, not all.
        theta = left.pool.theta + left(inputs).merge_logit.median() * left.pool.tau
        left.pool.theta.copy_(theta)
        right.pool.theta.copy_(theta)
        pl, pr = left(inputs), right(inputs)
    B, T = len(PAIRS), kw["max_answer_length"]
    torch.testing.assert_close(pr.canvas_log_probs.view(B, T, 8, 256),
                               pl.canvas_log_probs.view(B, T, 8, 256).flip(1))
    torch.testing.assert_close(pr.merge_logit.view(B, T - 1), pl.merge_logit.view(B, T - 1).flip(1))
    rev = reverse_within_graphs(targets.batch, B)
    nll_r = segmentation_nll(pr.canvas_log_probs, pr.canvas_batch, pr.merge_logit,
                             targets.x, targets.batch, B, align="right")
    nll_l = segmentation_nll(pl.canvas_log_probs, pl.canvas_batch, pl.merge_logit,
                             targets.x[rev], targets.batch, B, align="left")
    torch.testing.assert_close(nll_r, nll_l)
    # The pooled answer nodes (the decoded graphemes) are the left model's, reversed.
    torch.testing.assert_close(pr.batch, pl.batch)
    torch.testing.assert_close(pr.logits, pl.logits[reverse_within_graphs(pl.batch, B)])
    assert (pl.ptr.diff() > 1).any()  # not a trivial reversal
