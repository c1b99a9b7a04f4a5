"""GraphTransformNet(canvas_align=...): which canvas node of a segment speaks, and the
likelihood GraphemeModule trains it with."""

import pytest
import torch
from torch_geometric.data import Batch
from torch_geometric.loader import DataLoader

from pyg_grapheme import text_to_graph
from pyg_grapheme.data import FOLLOW_BATCH, PairData, split_pair_batch
from pyg_grapheme.loss import segmentation_nll
from pyg_grapheme.nn import GraphTransformNet
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


def test_the_speaking_end_copies_the_question_end_it_is_aligned_with():
    """Slot k's copy of the question: in reading order either way; left-aligned the first
    slot copies each question's first grapheme, right-aligned the last slot its last
    (where the forward copy floor(k n / T) put a grapheme from inside the question: on
    the place-value task often a digit of the number)."""
    from pyg_grapheme.nn.transform_net import copy_sources

    sizes = torch.tensor([39, 2, 5, 8, 1])
    ptr = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)])
    T = 8
    cvec = torch.arange(len(sizes)).repeat_interleave(T)
    for align in ("left", "right"):
        src = copy_sources(ptr, sizes, cvec, T, align).view(-1, T)
        assert (src.diff(dim=1) >= 0).all()
        assert ((src >= ptr[:-1, None]) & (src < ptr[1:, None])).all()
        end = src[:, 0] - ptr[:-1] if align == "left" else ptr[1:] - 1 - src[:, -1]
        assert (end == 0).all()
    # left-aligned, the forward copy
    torch.testing.assert_close(copy_sources(ptr, sizes, cvec, T, "left").view(-1, T)[0],
                               torch.arange(T) * 39 // T)
    # right-aligned, the mirror image of the left copy within each question
    right = copy_sources(ptr, sizes, cvec, T, "right").view(-1, T) - ptr[:-1, None]
    left = copy_sources(ptr, sizes, cvec, T, "left").view(-1, T) - ptr[:-1, None]
    torch.testing.assert_close(right, sizes[:, None] - 1 - left.flip(1))
