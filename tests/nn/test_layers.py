"""GraphemeEncoder, DAGConv and ByteHead: shapes, direction, gradients, compile."""

import pytest
import torch
from torch.autograd import gradcheck
from torch_geometric.data import Batch

from pyg_grapheme import text_to_graph
from pyg_grapheme.data import GRAPHEME_WIDTH
from pyg_grapheme.nn.blocks import GatedMessagePassing, PreNormGraphBlock
from pyg_grapheme.nn.dag_conv import DAGConv
from pyg_grapheme.nn.encoder import GraphemeEncoder, node_positions
from pyg_grapheme.nn.head import ByteHead, decode_slots, one_hot_bytes
from tests.conftest import DEVICES


def chain(n):
    src = torch.arange(n - 1)
    return torch.stack([src, src + 1])


def test_node_positions_restart_per_graph():
    batch = torch.tensor([0, 0, 0, 1, 1, 2])
    assert node_positions(6, batch).tolist() == [0, 1, 2, 0, 1, 0]
    assert node_positions(3, None).tolist() == [0, 1, 2]


def test_encoder_unseen_grapheme_and_position():
    torch.manual_seed(0)
    enc = GraphemeEncoder(16).eval()
    g = text_to_graph("aa\U0001F98Ea")  # an emoji never seen before: still a vector
    h = enc(g.x)
    assert h.shape == (4, 16) and torch.isfinite(h).all()
    assert not torch.allclose(h[0], h[1])  # same bytes, different position
    # Slots matter: the same byte in another slot gives another embedding.
    x = torch.zeros(2, GRAPHEME_WIDTH, dtype=torch.uint8)
    x[0, 0] = x[1, 1] = 66
    h2 = enc(x, torch.tensor([0, 1]))  # both at position 0 of their graphs
    assert not torch.allclose(h2[0], h2[1])
    with pytest.raises(ValueError, match="byte slots"):
        enc(torch.zeros(3, 4, dtype=torch.long))
    assert "GraphemeEncoder(16" in repr(enc)


def test_encoder_positions_past_the_table_warn_and_share_the_last():
    enc = GraphemeEncoder(8, max_positions=4)
    x = text_to_graph("abcdefg").x
    with pytest.warns(UserWarning, match="max_positions=4"):
        h = enc(x)
    # 'a' at 0 and 'a'... positions 3..6 share row 3: equal bytes would give equal vectors
    same = text_to_graph("aaaaaaa").x
    h = enc(same)
    assert torch.allclose(h[3], h[6]) and not torch.allclose(h[0], h[3])


def test_encoder_gradcheck_float64():
    torch.manual_seed(0)
    enc = GraphemeEncoder(8, max_positions=8).double()
    x = text_to_graph("hi!").x
    names, params = zip(*enc.named_parameters(), strict=True)

    def f(*ps):
        return torch.func.functional_call(enc, dict(zip(names, ps, strict=True)), (x,))

    assert gradcheck(f, tuple(p.detach().clone().requires_grad_() for p in params), eps=1e-6)


def test_dag_conv_respects_direction():
    torch.manual_seed(0)
    x = torch.randn(3, 8)
    ei = chain(3)
    fwd_only = DAGConv(8, backward=False)
    base = fwd_only(x, ei)
    x2 = x.clone()
    x2[2] += 1.0  # change the last node: only nodes it points to may change (none)
    out = fwd_only(x2, ei)
    assert torch.allclose(out[:2], base[:2]) and not torch.allclose(out[2], base[2])
    both = DAGConv(8)
    assert not torch.allclose(both(x2, ei)[1], both(x, ei)[1])  # successors now heard
    # Forward and backward messages use different weights: reversing the chain changes h.
    assert not torch.allclose(both(x, ei), both(x, ei.flip(0)))


def test_dag_conv_edge_weight_and_gradcheck():
    torch.manual_seed(0)
    conv = DAGConv(4).double()
    x = torch.randn(5, 4, dtype=torch.double, requires_grad=True)
    w = torch.rand(4, dtype=torch.double, requires_grad=True)
    assert gradcheck(lambda x, w: conv(x, chain(5), w), (x, w))
    assert not torch.allclose(conv(x, chain(5), w * 0), conv(x, chain(5), w))
    assert repr(conv) == "DAGConv(4, backward=True)"
    before = conv.lin_self.weight.clone()
    conv.reset_parameters()
    assert not torch.equal(before, conv.lin_self.weight)


def test_dag_conv_on_batch_matches_per_graph():
    torch.manual_seed(0)
    conv = DAGConv(8)
    graphs = [text_to_graph(t) for t in ["abc", "de", "f"]]
    batch = Batch.from_data_list(graphs)
    x = torch.randn(batch.num_nodes, 8)
    out = conv(x, batch.edge_index)
    for i, g in enumerate(graphs):
        sl = slice(int(batch.ptr[i]), int(batch.ptr[i + 1]))
        assert torch.allclose(out[sl], conv(x[sl], g.edge_index), atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_dag_conv_compiles(device):
    torch.manual_seed(0)
    conv = DAGConv(8).to(device)
    x = torch.randn(6, 8, device=device)
    ei = chain(6).to(device)
    compiled = torch.compile(conv)
    assert torch.allclose(compiled(x, ei), conv(x, ei), atol=1e-5)


def test_byte_head_and_one_hot_targets_decode():
    torch.manual_seed(0)
    head = ByteHead(16)
    logits = head(torch.randn(3, 16))
    assert logits.shape == (3, GRAPHEME_WIDTH, 256)
    batch = Batch.from_data_list([text_to_graph("caf\u00e9"), text_to_graph("\U0001F431")])
    target = one_hot_bytes(batch)
    assert target.x.shape == (batch.num_nodes, GRAPHEME_WIDTH, 256)
    assert torch.equal(target.x.sum(-1), torch.ones(batch.num_nodes, GRAPHEME_WIDTH))
    assert target.edge_index is batch.edge_index and batch.x.dtype == torch.uint8
    assert decode_slots(target.x.argmax(-1)).decode() == "caf\u00e9\U0001F431"
    # A slot after an end marker is ignored; invalid UTF-8 never raises.
    cls = torch.zeros(2, GRAPHEME_WIDTH, dtype=torch.long)
    cls[0, 0], cls[0, 2], cls[1, 0] = ord("a") + 1, ord("b") + 1, 0xFF  # 0xFE: never UTF-8
    assert decode_slots(cls).decode("utf-8", errors="replace") == "a\ufffd"


def test_dag_conv_without_residual_is_the_bare_branch():
    """residual=False returns GELU(W0 h + messages) alone (for pre-LN blocks): the
    residual layer is LN(h + that branch), with the same weights."""
    torch.manual_seed(0)
    full = DAGConv(8)
    bare = DAGConv(8, residual=False)
    bare.load_state_dict({k: v for k, v in full.state_dict().items()
                          if not k.startswith("norm.")})
    x, ei = torch.randn(5, 8), chain(5)
    assert torch.allclose(full(x, ei), full.norm(x + bare(x, ei)), atol=1e-6)
    assert bare.norm is None and "norm" not in dict(bare.named_parameters())
    assert repr(bare) == "DAGConv(8, backward=True, residual=False)"


def test_gated_message_passing_starts_as_identity_and_learns_its_gate():
    torch.manual_seed(0)
    layer = GatedMessagePassing(8)
    x = torch.randn(5, 8, requires_grad=True)
    out = layer(x, chain(5))
    assert torch.equal(out, x)  # the gate starts closed: the embedding passes unchanged
    out.pow(2).sum().backward()
    assert layer.gate.grad.abs().sum() > 0  # ... and gets a gradient to open
    with torch.no_grad():
        layer.gate.fill_(1.0)
    y = x.detach()
    expected = y + layer.conv(layer.norm(y), chain(5))
    assert torch.allclose(layer(y, chain(5)), expected)
    layer.reset_parameters()
    assert torch.equal(layer.gate, torch.zeros(8))
    assert repr(layer) == "GatedMessagePassing(8, backward=True)"
    assert torch.equal(GatedMessagePassing(8, gate=1.0).gate, torch.ones(8))


@pytest.mark.parametrize("device", DEVICES)
def test_prenorm_graph_block_is_batch_aware_and_compiles(device):
    """A graph's output does not depend on the other graphs of its batch (attention is
    masked per graph), and the block compiles."""
    torch.manual_seed(0)
    block = PreNormGraphBlock(8, heads=2).to(device).eval()
    with torch.no_grad():
        block.local.gate.fill_(0.5)
    graphs = [text_to_graph(t) for t in ["abcd", "ef", "g"]]
    batch = Batch.from_data_list(graphs).to(device)
    x = torch.randn(batch.num_nodes, 8, device=device)
    out = block(x, batch.edge_index, batch.batch)
    for i, g in enumerate(graphs):
        sl = slice(int(batch.ptr[i]), int(batch.ptr[i + 1]))
        vec = torch.zeros(g.num_nodes, dtype=torch.long, device=device)
        alone = block(x[sl], g.edge_index.to(device), vec)
        assert torch.allclose(out[sl], alone, atol=1e-5)
    compiled = torch.compile(block, backend="aot_eager")
    assert torch.allclose(compiled(x, batch.edge_index, batch.batch), out, atol=1e-5)
    assert repr(block) == "PreNormGraphBlock(8, heads=2)"


def test_byte_head_output_prior_is_each_slots_byte_frequency():
    """init_output_prior sets the output bias to log((count + smoothing) / total) per slot;
    counted per slot with bincount, it equals the one-hot count (the oracle here), and a
    large answer set (200k graphemes, a 3.3 GB one-hot) costs only its own size."""
    torch.manual_seed(0)
    head = ByteHead(8)
    target = torch.randint(0, 5, (50, GRAPHEME_WIDTH), dtype=torch.uint8)
    head.init_output_prior(target, smoothing=0.1)
    counts = torch.nn.functional.one_hot(target.long(), 256).sum(0).double() + 0.1
    expected = (counts / counts.sum(-1, keepdim=True)).log().view(-1)
    assert torch.allclose(head.lin2.bias.double(), expected, atol=1e-6)
    big = torch.randint(0, 256, (200_000, GRAPHEME_WIDTH), dtype=torch.uint8)
    head.init_output_prior(big)
    assert torch.isfinite(head.lin2.bias).all()


# --------------------------------------------------------------- run positions (place value)

RUN_TEXTS = ["In 76249607, which digit?", "héllo ٣٤٥ 👍🏽x!!", "", "7", "a1b22c333 "]


def _graphemes(text: str) -> list[str]:
    import regex  # the UAX #29 oracle text_to_graph is tested against

    return regex.findall(r"\X", text)


def test_first_code_point_and_category_match_python():
    import unicodedata

    from pyg_grapheme.nn.encoder import CATEGORIES, first_code_point

    enc = GraphemeEncoder(8, run_positions=4)
    texts = [t for t in RUN_TEXTS if t] + ["e\u0301\u4e2d\U0001f600\u200d\u00a0\t"]
    batch = Batch.from_data_list([text_to_graph(t) for t in texts])
    first = [ord(g[0]) for t in texts for g in _graphemes(t)]
    assert first_code_point(batch.x).tolist() == first
    expected = [CATEGORIES.index(unicodedata.category(chr(c))[0]) + 1 for c in first]
    assert enc.category(batch.x).tolist() == expected
    # Not a UTF-8 lead byte (a continuation byte first): undecodable, category 0.
    bad = torch.tensor([[0x80 + 1] + [0] * (GRAPHEME_WIDTH - 1)], dtype=torch.uint8)
    assert first_code_point(bad).tolist() == [-1]
    assert enc.category(bad).tolist() == [0]


def test_each_encoder_owns_its_category_table():
    """The table is built once per process but each module holds a copy: writing into one
    model's buffers (an in-place weight average, a swap) must not reach another model."""
    a, b = GraphemeEncoder(8, run_positions=4), GraphemeEncoder(8, run_positions=4)
    before = b.category_table.clone()
    a.category_table.zero_()
    assert torch.equal(b.category_table, before)
    assert torch.equal(GraphemeEncoder(8, run_positions=4).category_table, before)


def test_run_positions_match_a_python_reference():
    import itertools
    import unicodedata

    from pyg_grapheme.nn.encoder import run_positions

    enc = GraphemeEncoder(8, run_positions=4)
    batch = Batch.from_data_list([text_to_graph(t) for t in RUN_TEXTS])
    start, end = run_positions(enc.category(batch.x), batch.batch)
    ref_start, ref_end = [], []
    for text in RUN_TEXTS:
        cats = [unicodedata.category(g[0])[0] for g in _graphemes(text)]
        for _, run in itertools.groupby(cats):
            k = len(list(run))
            ref_start += list(range(k))
            ref_end += list(range(k - 1, -1, -1))
    assert start.tolist() == ref_start and end.tolist() == ref_end
    # A digit's distance from the end of its number is its place value.
    g = _graphemes(RUN_TEXTS[0])
    units = g.index("7", 4)  # the last digit of 76249607
    assert end[units] == 0 and end[g.index("7")] == 7 and end[g.index("6")] == 6
    # Runs never cross graphs: "7" alone and the next graph's "a" each start a run.
    empty = run_positions(torch.zeros(0, dtype=torch.long), None)
    assert empty[0].numel() == 0 and empty[1].numel() == 0


def test_encoder_run_positions_tell_places_apart_and_are_not_saved():
    torch.manual_seed(0)
    plain, runs = GraphemeEncoder(16), GraphemeEncoder(16, run_positions=8)
    runs.load_state_dict(plain.state_dict(), strict=False)
    assert "category_table" not in runs.state_dict()
    assert {"run_end_emb.weight", "run_start_emb.weight"} <= set(runs.state_dict())
    # "1 11": the second "1" of "11" and the lone "1" differ only by their run place.
    b = Batch.from_data_list([text_to_graph("1 11")])
    h0, h1 = plain(b.x, b.batch), runs(b.x, b.batch)
    assert torch.allclose(h0[0] + runs.run_end_emb.weight[0] + runs.run_start_emb.weight[0],
                          h1[0], atol=1e-6)
    assert not torch.allclose(h1[2] - h0[2], h1[3] - h0[3])
    assert "run_positions=8" in repr(runs)
    with pytest.raises(ValueError, match="run_positions"):
        GraphemeEncoder(8, run_positions=-1)


def test_encoder_with_run_positions_compiles():
    enc = GraphemeEncoder(8, run_positions=4).eval()
    b = Batch.from_data_list([text_to_graph(t) for t in ("12 345", "ab")])
    compiled = torch.compile(enc, backend="aot_eager", dynamic=False)
    assert torch.allclose(compiled(b.x, b.batch), enc(b.x, b.batch), atol=1e-6)
