"""Options the networks pass on to their parts reach them (issue 15 item 6: no untested
option): the pool's temperature scales the merge logits, ``ff_mult`` widens every
attention layer's feed-forward, the edge head gets its width and gradient form."""

import pytest
import torch
from torch_geometric.data import Batch

from pyg_grapheme import text_to_graph
from pyg_grapheme.nn import ExpressionNet, GraphTransformNet

QUESTIONS = ["What colour is the sky?", "(+ (* 3 4) 5)", "a"]


def _inputs():
    return Batch.from_data_list([text_to_graph(q) for q in QUESTIONS])


@pytest.mark.parametrize("block", ["gps", "pre_ln"])
def test_transform_net_pool_tau_scales_the_merge_logits(block):
    torch.manual_seed(0)
    base = GraphTransformNet(hidden=16, heads=2, max_answer_length=8, block=block,
                             pool_tau=1.0).eval()
    hot = GraphTransformNet(hidden=16, heads=2, max_answer_length=8, block=block).eval()
    hot.load_state_dict(base.state_dict())
    assert hot.pool.tau == 0.5  # the default
    with torch.no_grad():
        z, z_hot = base(_inputs()).merge_logit, hot(_inputs()).merge_logit
    torch.testing.assert_close(z_hot, 2 * z)


@pytest.mark.parametrize("block", ["gps", "pre_ln"])
def test_transform_net_ff_mult_sets_every_feed_forward_width(block):
    net = GraphTransformNet(hidden=16, heads=2, max_answer_length=8, block=block, ff_mult=3)
    widths = [m.out_features for name, m in net.named_modules() if name.endswith("linear1")]
    assert widths and set(widths) == {48}
    small = GraphTransformNet(hidden=16, heads=2, max_answer_length=8, block=block)
    extra = sum(p.numel() for p in net.parameters()) - sum(p.numel()
                                                           for p in small.parameters())
    assert extra == len(widths) * (2 * 16 * 16 + 16)  # one hidden-wide slab in, one out


def test_expression_net_passes_its_pool_and_edge_head_options():
    torch.manual_seed(0)
    net = ExpressionNet(hidden=16, heads=2, pool_tau=0.25, edge_hidden=8,
                        edge_natural_gradient=True)
    assert net.pool.tau == 0.25
    assert net.edge_head.hidden_channels == 8 and net.edge_head.natural_gradient
    default = ExpressionNet(hidden=16, heads=2)
    assert default.pool.tau == 1.0 and default.edge_head.hidden_channels == 16
    assert not default.edge_head.natural_gradient
    out = net(_inputs())  # and the options run
    assert torch.isfinite(out.edge_weight).all()


def test_transform_net_decoder_repeats_reuse_the_decoder_weights():
    torch.manual_seed(0)
    kw = dict(hidden=16, heads=2, max_answer_length=8)
    once = GraphTransformNet(**kw).eval()
    twice = GraphTransformNet(**kw, decoder_repeats=2).eval()
    twice.load_state_dict(once.state_dict())  # the same parameters, nothing added
    with torch.no_grad():
        a, b = once(_inputs()).canvas_log_probs, twice(_inputs()).canvas_log_probs
    assert not torch.allclose(a, b)  # the second pass changes the canvas
    with pytest.raises(ValueError, match="decoder_repeats"):
        GraphTransformNet(**kw, decoder_repeats=0)
