import regex
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch_geometric.data import Batch

from pyg_grapheme import graph_to_text, text_to_graph
from pyg_grapheme.data import GRAPHEME_WIDTH, PAD, graphs_to_texts
from pyg_grapheme.data.graphemes import decode_slots, grapheme_spans

# Unicode text without lone surrogates (they have no UTF-8 form).
any_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=80)
# Text biased towards the hard cases: marks, joiners, flags, Hangul jamo, CR/LF.
tricky = st.text(
    alphabet=st.sampled_from(
        list("ae \r\n\t\x00") + ["\u0301", "\u0308", "\u200d", "\u0915", "\u094d", "\u093f",
        "\U0001F468", "\U0001F469", "\U0001F1EB", "\U0001F1F7", "\u1100", "\u1161", "\u11a8",
        "\uac00", "\uac01", "\ufe0f", "\U0001F3FD", "\u0600", "\u05d0", "\u4e2d"]
    ),
    max_size=40,
)


def reference_clusters(text):
    return regex.findall(r"\X", text)


def test_examples_are_single_nodes():
    cases = {
        "e\u0301": 1,  # e + combining acute
        "\U0001F468\u200d\U0001F469\u200d\U0001F467": 1,  # ZWJ family
        "\U0001F1EB\U0001F1F7": 1,  # flag
        "\r\n": 1,  # CRLF
        "\u1100\u1161\u11a8": 1,  # Hangul jamo L V T
        "abc": 3,
        "\u0645\u0631\u062d\u0628\u0627": 5,  # Arabic, RTL
    }
    for text, n in cases.items():
        g = text_to_graph(text)
        assert g.num_nodes == n, text
        assert graph_to_text(g) == text


def test_layout_and_encoding():
    g = text_to_graph("hé!")
    assert g.x.dtype == torch.uint8 and g.x.shape == (3, GRAPHEME_WIDTH)
    assert g.x[0].tolist() == [ord("h") + 1] + [PAD] * (GRAPHEME_WIDTH - 1)
    assert g.x[1, :2].tolist() == [0xC3 + 1, 0xA9 + 1] and g.x[1, 2:].eq(PAD).all()
    assert g.edge_index.tolist() == [[0, 1], [1, 2]]
    assert g.grapheme_len.tolist() == [1, 2, 1]
    assert decode_slots(g.x).decode() == "hé!"


def test_long_grapheme_overflows_x_but_round_trips():
    family = "\U0001F468\u200d\U0001F469\u200d\U0001F467\u200d\U0001F466"
    g = text_to_graph("a" + family)
    assert g.grapheme_len[1] == len(family.encode()) > GRAPHEME_WIDTH
    assert g.x[1].ne(PAD).all()  # truncated to the first GRAPHEME_WIDTH bytes
    assert graph_to_text(g) == "a" + family


def test_empty_text_is_an_empty_graph():
    g = text_to_graph("")
    assert g.num_nodes == 0 and g.x.shape == (0, GRAPHEME_WIDTH)
    assert g.edge_index.shape == (2, 0)
    assert graph_to_text(g) == ""


def test_lone_surrogate_is_a_clear_error():
    try:
        text_to_graph("a\ud800b")
    except ValueError as err:
        assert "surrogate" in str(err) and "position 1" in str(err)
    else:
        raise AssertionError("no error")


def test_skip_edges_marked_in_edge_attr():
    g = text_to_graph("abcde", skip=(2,))
    assert g.edge_index.size(1) == 4 + 3
    assert sorted(g.edge_attr.tolist()) == [1] * 4 + [2] * 3
    src, dst = g.edge_index
    assert torch.equal(dst - src, g.edge_attr)  # reading order: still a DAG


def test_batch_decodes_graph_by_graph():
    texts = ["hello", "", "e\u0301\U0001F1EB\U0001F1F7", "x"]
    batch = Batch.from_data_list([text_to_graph(t) for t in texts])
    assert graphs_to_texts(batch) == texts


@settings(max_examples=300, deadline=None)
@given(any_text)
def test_round_trip_any_text(text):
    g = text_to_graph(text)
    assert graph_to_text(g) == text
    assert g.num_nodes == len(reference_clusters(text))


@settings(max_examples=300, deadline=None)
@given(tricky)
def test_segmentation_matches_regex(text):
    assert grapheme_spans(text).tolist() == [len(c) for c in reference_clusters(text)]
    g = text_to_graph(text)
    assert graph_to_text(g) == text
    src, dst = g.edge_index
    assert bool((src < dst).all())  # reading order, so a DAG
