"""RelativePositionBias: T5's bucket function transcribed as the oracle, the bias per graph
against attention run graph by graph, PyG's GPSConv at a zero table, gradients in
float64, the model option, compile, bad input."""

import math

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck
from torch_geometric.data import Batch
from torch_geometric.nn import GPSConv

from pyg_grapheme import text_to_graph
from pyg_grapheme.nn import GraphTransformNet, PreNormGraphBlock, RelativePositionBias
from pyg_grapheme.nn.blocks import SizedGPSConv, gps_layer, reading_order
from pyg_grapheme.nn.relative_position import relative_buckets

TEXTS = ["(* (- 2 4) 4)", "x", "12+3", "hello wörld 👋🏽"]


def t5_bucket(relative_position: int, num_buckets: int, max_distance: int) -> int:
    """T5's ``_relative_position_bucket`` (bidirectional), one distance at a time, as
    mesh-tensorflow / HF transformers write it."""
    ret = 0
    n = -relative_position
    num_buckets //= 2
    ret += (n < 0) * num_buckets
    n = abs(n)
    max_exact = num_buckets // 2
    if n < max_exact:
        return ret + n
    val = max_exact + int(math.log(n / max_exact) / math.log(max_distance / max_exact)
                          * (num_buckets - max_exact))
    return ret + min(val, num_buckets - 1)


@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (16, 64), (8, 20)])
def test_buckets_are_t5s(num_buckets, max_distance):
    d = torch.arange(-300, 301)
    got = relative_buckets(d, num_buckets, max_distance)
    want = torch.tensor([t5_bucket(int(v), num_buckets, max_distance) for v in d])
    assert torch.equal(got, want)
    half = num_buckets // 2
    assert got.min() == 0 and got.max() == num_buckets - 1
    assert (got[d > 0] >= half).all() and (got[d <= 0] < half).all()  # the sign kept
    exact = torch.arange(half // 2)
    assert torch.equal(got[300 - exact], exact)  # exact near 0, each sign apart
    assert torch.equal(got[300 + exact[1:]], half + exact[1:])
    assert (got[d >= max_distance] == num_buckets - 1).all()  # shared beyond


def _batch():
    batch = Batch.from_data_list([text_to_graph(t) for t in TEXTS])
    vec, b, chain = reading_order(batch)
    return batch, vec, b, chain


def test_bias_table_layout_and_padding():
    rel = RelativePositionBias(heads=3, num_buckets=8, max_distance=20, init="zeros")
    with torch.no_grad():
        rel.bias.weight.normal_()
    pad = torch.tensor([[False] * 5, [False, False, True, True, True]])
    out = rel(5, 2, pad)
    assert out.shape == (6, 5, 5)
    for b in range(2):
        for h in range(3):
            for i in range(5):
                for j in range(5):
                    bucket = t5_bucket(j - i, 8, 20)
                    want = rel.bias.weight[bucket, h]
                    got = out[b * 3 + h, i, j]
                    assert got == (float("-inf") if pad[b, j] else want)
    assert repr(rel) == ("RelativePositionBias(heads=3, num_buckets=8, max_distance=20, "
                         "init='zeros')")
    rel.reset_parameters()
    assert not rel.bias.weight.any()


def test_alibi_init_is_alibis_penalty_at_each_bucket():
    rel = RelativePositionBias(heads=4, num_buckets=32, max_distance=128, init="alibi")
    slopes = torch.tensor([2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8])  # Press et al., H=4
    table = rel(200, 1)  # [4, 200, 200]: entry (h, i, j) is the bias of distance j - i
    d = torch.arange(200)
    for h in range(4):
        exact = table[h, 100, 100 - 7 : 100 + 8]  # distances -7..7: exact buckets
        torch.testing.assert_close(exact, -slopes[h] * torch.arange(-7, 8).abs().float())
        # farther: the penalty of the bucket's nearest distance, so never more than ALiBi's
        row = table[h, 0]
        assert (row <= 0).all() and (row >= -slopes[h] * d.clamp(max=128)).all()
        assert torch.all(row[1:] <= row[:-1])  # monotone in the distance
    with torch.no_grad():
        rel.bias.weight.zero_()
    rel.reset_parameters()  # back to ALiBi, not to 0
    assert rel.bias.weight.abs().sum() > 0


def _per_graph_attention(attn: nn.MultiheadAttention, rel: RelativePositionBias,
                         x: torch.Tensor, ptr: torch.Tensor) -> torch.Tensor:
    """Each graph alone through the same attention, with the bias of its own length."""
    out = []
    for g in range(ptr.numel() - 1):
        xg = x[ptr[g] : ptr[g + 1]].unsqueeze(0)
        mask = rel(xg.size(1), 1)
        out.append(attn(xg, xg, xg, attn_mask=mask, need_weights=False)[0][0])
    return torch.cat(out)


def test_gps_layer_bias_equals_attention_graph_by_graph():
    torch.manual_seed(0)
    batch, vec, b, chain = _batch()
    layer = gps_layer(8, 2, relative_buckets=16).double().eval()
    with torch.no_grad():
        layer.relative.bias.weight.normal_()
    x = torch.randn(batch.num_nodes, 8, dtype=torch.double)
    longest = int(batch.ptr.diff().max())
    out = layer(x, chain, vec, batch_size=b, max_num_nodes=longest)
    # the layer's own steps around the attention, the attention graph by graph
    h = layer.norm1(layer.conv(x, chain) + x)
    a = _per_graph_attention(layer.attn, layer.relative, x, batch.ptr)
    a = layer.norm2(a + x)
    ref = h + a
    ref = layer.norm3(ref + layer.mlp(ref))
    torch.testing.assert_close(out, ref)
    # sizes read when not given: the same result
    torch.testing.assert_close(layer(x, chain, vec), out)
    assert "relative_buckets=16" in repr(layer)


def test_zero_table_is_pygs_gpsconv():
    torch.manual_seed(0)
    batch, vec, b, chain = _batch()
    layer = gps_layer(8, 2, relative_buckets=32, relative_init="zeros")
    ref = GPSConv(8, layer.conv, heads=2, act="gelu", norm="layer_norm",
                  norm_kwargs={"mode": "node"})
    ref.load_state_dict(layer.state_dict(), strict=False)
    x = torch.randn(batch.num_nodes, 8)
    longest = int(batch.ptr.diff().max())
    torch.testing.assert_close(layer(x, chain, vec, batch_size=b, max_num_nodes=longest),
                               ref(x, chain, vec))


def test_pre_ln_block_bias_equals_attention_graph_by_graph():
    torch.manual_seed(0)
    batch, vec, b, chain = _batch()
    block = PreNormGraphBlock(8, 2, gate=0.5, relative_buckets=16).double().eval()
    with torch.no_grad():
        block.relative.bias.weight.normal_()
    x = torch.randn(batch.num_nodes, 8, dtype=torch.double)
    longest = int(batch.ptr.diff().max())
    out = block(x, chain, vec, batch_size=b, max_num_nodes=longest)
    h = block.local(x, chain)
    ref = torch.cat([
        block.attn(h[batch.ptr[g] : batch.ptr[g + 1]].unsqueeze(0),
                   src_mask=block.relative(int(batch.ptr[g + 1] - batch.ptr[g]), 1))[0]
        for g in range(b)])
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(block(x, chain, vec), out)
    assert repr(block) == "PreNormGraphBlock(8, heads=2, relative_buckets=16)"


def test_gradcheck_float64():
    """Gradients w.r.t. the features and the bias table, on three graphs of 1-13 nodes."""
    torch.manual_seed(0)
    batch = Batch.from_data_list([text_to_graph(t) for t in TEXTS[:3]])
    vec, b, chain = reading_order(batch)
    longest = int(batch.ptr.diff().max())
    layer = gps_layer(4, 2, relative_buckets=8).double()
    x = torch.randn(batch.num_nodes, 4, dtype=torch.double, requires_grad=True)
    table = torch.randn(8, 2, dtype=torch.double, requires_grad=True)

    def f(x, table):
        return torch.func.functional_call(
            layer, {"relative.bias.weight": table}, (x, chain, vec),
            {"batch_size": b, "max_num_nodes": longest})

    assert gradcheck(f, (x, table))
    f(x, table).sum().backward()
    assert table.grad.abs().sum() > 0


def test_default_model_has_the_alibi_started_bias():
    model = GraphTransformNet(hidden=16, heads=2)
    for layer in model.enc:
        assert layer.relative.num_buckets == 32 and layer.relative.init == "alibi"
        assert layer.relative.bias.weight[1, 0] < 0  # distance -1 penalised from the start
    assert all(not hasattr(layer, "relative") or layer.relative is None
               for layer in GraphTransformNet(hidden=16, heads=2, relative_positions=0).enc)


def test_zero_started_option_starts_as_the_model_without_it():
    torch.manual_seed(0)
    batch = Batch.from_data_list([text_to_graph(t) for t in TEXTS])
    base = GraphTransformNet(hidden=16, heads=2, max_answer_length=6,
                             relative_positions=0).eval()
    rel = GraphTransformNet(hidden=16, heads=2, max_answer_length=6,
                            relative_positions=16, relative_init="zeros").eval()
    missing = rel.load_state_dict(base.state_dict(), strict=False).missing_keys
    assert missing == ["enc.0.relative.bias.weight", "enc.1.relative.bias.weight"]
    torch.testing.assert_close(rel(batch).canvas_log_probs, base(batch).canvas_log_probs)
    with torch.no_grad():
        for layer in rel.enc:
            layer.relative.bias.weight.normal_()
    assert not torch.allclose(rel(batch).canvas_log_probs, base(batch).canvas_log_probs)
    rel.reset_parameters()
    assert all(not layer.relative.bias.weight.any() for layer in rel.enc)
    n_params = sum(p.numel() for p in rel.parameters())
    assert n_params == sum(p.numel() for p in base.parameters()) + 2 * 2 * 16
    pre = GraphTransformNet(hidden=16, heads=2, max_answer_length=6, block="pre_ln",
                            relative_positions=8, relative_init="alibi")
    assert all(layer.relative.num_buckets == 8 and layer.relative.init == "alibi"
               for layer in pre.enc)


def test_model_option_under_compile_equals_eager():
    torch.manual_seed(0)
    batch = Batch.from_data_list([text_to_graph(t) for t in TEXTS])
    model = GraphTransformNet(hidden=16, heads=2, max_answer_length=6,
                              relative_positions=16, canvas_relative_positions=16)
    with torch.no_grad():
        for rel in [layer.relative for layer in model.enc] + [*model.canvas_relative]:
            rel.bias.weight.normal_()
    eager = model(batch)
    compiled = torch.compile(model, backend="aot_eager")(batch)
    torch.testing.assert_close(compiled.canvas_log_probs, eager.canvas_log_probs)


def test_bad_arguments():
    with pytest.raises(ValueError, match="init"):
        RelativePositionBias(2, init="sinusoidal")
    with pytest.raises(ValueError, match="multiple of 4"):
        RelativePositionBias(2, num_buckets=6)
    with pytest.raises(ValueError, match="max_distance"):
        RelativePositionBias(2, num_buckets=32, max_distance=8)
    with pytest.raises(ValueError, match="multiple of 4"):
        GraphTransformNet(hidden=16, heads=2, relative_positions=-4)
    with pytest.raises(ValueError, match="multihead"):
        SizedGPSConv(8, None, heads=2, attn_type="performer", relative_buckets=8)


@pytest.mark.parametrize("block", ["gps", "pre_ln"])
def test_empty_question_in_the_batch_stays_finite(block):
    """An empty graph's dense row has every key padded (all -inf in the bias)."""
    torch.manual_seed(0)
    model = GraphTransformNet(hidden=16, heads=2, max_answer_length=6, block=block,
                              relative_positions=16, relative_init="alibi")
    batch = Batch.from_data_list([text_to_graph(t) for t in ["ab", "", "x y"]])
    out = model(batch)
    out.canvas_log_probs.sum().backward()
    assert torch.isfinite(out.canvas_log_probs).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_eval_mode_computes_what_training_mode_does():
    """torch's fused inference path of ``TransformerEncoderLayer`` read the bias mask
    wrongly (a pre-LN model's validation loss went NaN); both forms agree across modes."""
    torch.manual_seed(0)
    batch, vec, b, chain = _batch()
    longest = int(batch.ptr.diff().max())
    x = torch.randn(batch.num_nodes, 32)
    for layer in (gps_layer(32, 4, relative_buckets=32),
                  PreNormGraphBlock(32, 4, gate=0.5, relative_buckets=32)):
        with torch.no_grad():
            layer.relative.bias.weight.normal_(0, 5)
            train = layer.train()(x, chain, vec, batch_size=b, max_num_nodes=longest)
            evaluated = layer.eval()(x, chain, vec, batch_size=b, max_num_nodes=longest)
        torch.testing.assert_close(evaluated, train)


def test_canvas_bias_batched_equals_each_question_alone():
    """The decoder's canvas bias is one ``[heads, T, T]`` table repeated over the batch:
    a batch answers what each question answers alone (a wrong batch-major layout, e.g.
    graph-major heads, mixes heads between graphs and fails)."""
    torch.manual_seed(0)
    model = GraphTransformNet(hidden=16, heads=4, max_answer_length=6,
                              canvas_relative_positions=16).eval()
    assert len(model.canvas_relative) == 2
    with torch.no_grad():
        for rel in model.canvas_relative:
            rel.bias.weight.normal_(0, 3)
    graphs = [text_to_graph(t) for t in TEXTS]
    together = model(Batch.from_data_list(graphs)).canvas_log_probs
    alone = torch.cat([model(Batch.from_data_list([g])).canvas_log_probs for g in graphs])
    torch.testing.assert_close(together, alone)
    base = GraphTransformNet(hidden=16, heads=4, max_answer_length=6).eval()
    base.load_state_dict(model.state_dict(), strict=False)
    assert not torch.allclose(base(Batch.from_data_list(graphs)).canvas_log_probs, together)
    with torch.no_grad():
        for rel in model.canvas_relative:
            rel.bias.weight.zero_()
    torch.testing.assert_close(model(Batch.from_data_list(graphs)).canvas_log_probs,
                               base(Batch.from_data_list(graphs)).canvas_log_probs)
    assert sum(p.numel() for p in model.parameters()) == (
        sum(p.numel() for p in base.parameters()) + 2 * 16 * 4)
