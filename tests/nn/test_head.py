"""ByteHead's factorized form (one output layer shared by the byte slots)."""

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.data import Batch

from pyg_grapheme import text_to_graph
from pyg_grapheme.data.graphemes import GRAPHEME_WIDTH, NUM_BYTE_CLASSES
from pyg_grapheme.nn import ByteHead, GraphTransformNet


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_factorized_head_is_its_formula_with_its_parameter_count():
    torch.manual_seed(0)
    head = ByteHead(16, hidden_channels=12, factorized=True)
    h = torch.randn(5, 16)
    out = head(h)
    assert out.shape == (5, GRAPHEME_WIDTH, NUM_BYTE_CLASSES)
    # the oracle: slot by slot, W2 gelu(W1 h + s_k) + b_k
    for k in range(GRAPHEME_WIDTH):
        u = F.gelu(head.lin1(h) + head.slot[k])
        want = u @ head.lin2.weight.T + head.lin2.bias + head.slot_bias[k]
        torch.testing.assert_close(out[:, k], want)
    W, C, H = GRAPHEME_WIDTH, NUM_BYTE_CLASSES, 12
    assert count(head) == 16 * H + H + W * H + H * C + C + W * C
    assert count(ByteHead(16, 12)) == 16 * H + H + H * W * C + W * C  # default unchanged
    assert repr(head) == "ByteHead(16, slots=8, factorized=True)"
    assert repr(ByteHead(16)) == "ByteHead(16, slots=8)"


def test_factorized_slots_differ_from_the_start_and_reset():
    torch.manual_seed(0)
    head = ByteHead(8, factorized=True)
    out = head(torch.randn(3, 8))
    assert not torch.allclose(out[:, 0], out[:, 1])  # the slot embedding tells them apart
    head.slot_bias.data.fill_(3.0)
    head.reset_parameters()
    assert torch.count_nonzero(head.slot_bias) == 0


def test_factorized_head_gradcheck():
    torch.manual_seed(0)
    head = ByteHead(4, hidden_channels=3, factorized=True).double()
    h = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: head(x).log_softmax(-1), (h,))
    head(h).log_softmax(-1).sum().backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_factorized_output_prior_sits_in_the_slot_bias():
    """With a zero output weight the head predicts exactly each slot's log byte frequency
    (the one-hot count is the oracle)."""
    torch.manual_seed(0)
    head = ByteHead(8, factorized=True)
    target = torch.randint(0, 5, (50, GRAPHEME_WIDTH), dtype=torch.uint8)
    head.init_output_prior(target, smoothing=0.1)
    counts = F.one_hot(target.long(), 256).sum(0).double() + 0.1
    expected = (counts / counts.sum(-1, keepdim=True)).log()
    torch.testing.assert_close(head.slot_bias.double(), expected, atol=1e-6, rtol=0)
    head.lin2.weight.data.zero_()
    out = head(torch.randn(4, 8)).log_softmax(-1).double()
    torch.testing.assert_close(out, expected.expand(4, -1, -1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("block", ["gps", "pre_ln"])
def test_net_with_factorized_head_trains_every_parameter(block):
    torch.manual_seed(0)
    net = GraphTransformNet(hidden=16, heads=2, max_answer_length=8, block=block,
                            head_factorized=True)
    assert net.head.factorized and count(net.head) < count(ByteHead(16)) / 4
    inputs = Batch.from_data_list([text_to_graph(q) for q in ["(* (- 2 4) 4)", "7"]])
    pred = net(inputs)
    assert pred.canvas_log_probs.shape == (16, GRAPHEME_WIDTH, NUM_BYTE_CLASSES)
    pred.canvas_log_probs[..., 1].sum().backward()
    for name, p in net.head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert len(net.generate(["(+ 1 2)", "9"])) == 2
