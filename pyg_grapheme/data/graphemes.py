"""Text <-> PyG graph: one node per extended grapheme cluster, edges in reading order.

Encoding of a node (the model-facing, vocabulary-free representation)
--------------------------------------------------------------------
``x`` is a ``torch.uint8`` tensor of shape ``[num_nodes, GRAPHEME_WIDTH]``. Slot ``k`` of
node ``i`` holds ``byte_k + 1`` where ``byte_k`` is the ``k``-th UTF-8 byte of grapheme
``i``, and ``0`` (:data:`PAD`) once the grapheme has ended. Valid UTF-8 never contains the
bytes ``0xF5..0xFF``, so ``byte + 1`` always fits a ``uint8`` and a model needs only
:data:`NUM_BYTE_CLASSES` ``= 256`` classes per slot (class 0 = end/pad).

Graphemes longer than ``GRAPHEME_WIDTH`` bytes (ZWJ emoji sequences, stacked combining
marks) are truncated in ``x`` but never lost: ``text_bytes`` (``uint8``, the whole UTF-8
text) and ``grapheme_len`` (bytes per node) are the exact store that
:func:`graph_to_text` decodes. Both batch by concatenation, so a :class:`Batch` still
decodes graph by graph.

Segmentation follows Unicode UAX #29 extended grapheme clusters as implemented by the
``regex`` package (``\\X``), vectorised with NumPy. Every code point gets a class (its
Grapheme_Cluster_Break value plus the Extended_Pictographic and Indic_Conjunct_Break
flags, all read from ``regex``'s own tables once) and every boundary between two code
points is looked up in a class-pair table of the rules that need no context (GB3-GB9b,
GB999). Only the boundaries whose rule looks further back -- emoji ZWJ sequences (GB11),
regional-indicator flags (GB12/13) and Indic conjuncts (GB9c) -- are handed to ``regex``,
each within the stretch between its nearest certain breaks, so the result is exactly
``regex``'s and conversion stays an order of magnitude faster than a per-character
Python loop.
"""

from __future__ import annotations

import functools

import numpy as np
import regex
import torch
from torch_geometric.data import Data

GRAPHEME_WIDTH = 8
PAD = 0
NUM_BYTE_CLASSES = 256

_GRAPHEME = regex.compile(r"\X")

# Class of a code point: its Grapheme_Cluster_Break value (low 4 bits, index into
# _GCB) plus flags. All from ``regex``'s tables, so the pair rules agree with its ``\X``.
_GCB = ("Other", "CR", "LF", "Control", "Extend", "ZWJ", "Regional_Indicator", "Prepend",
        "SpacingMark", "L", "V", "T", "LV", "LVT")
_EXT_PICT, _INCB_CONSONANT, _INCB_EXTEND_OR_LINKER = 16, 32, 64
_NUM_CLASSES = 128
_SLOTS = np.arange(GRAPHEME_WIDTH)
# Decision for a boundary: certain break, certain join, or ask regex (context rules).
_BREAK, _JOIN, _ASK = 0, 1, 2


def _pair_rules() -> np.ndarray:
    """``table[a, b]``: the decision for the boundary between classes ``a`` and ``b``."""
    a = np.arange(_NUM_CLASSES)[:, None]
    b = np.arange(_NUM_CLASSES)[None, :]
    ga, gb = a & 15, b & 15
    g = {name: i for i, name in enumerate(_GCB)}

    def isin(x, *names):
        return np.isin(x, [g[n] for n in names])

    rules = [  # UAX #29 in rule order; the first that matches decides.
        (isin(ga, "CR") & isin(gb, "LF"), _JOIN),  # GB3
        (isin(ga, "Control", "CR", "LF"), _BREAK),  # GB4
        (isin(gb, "Control", "CR", "LF"), _BREAK),  # GB5
        (isin(ga, "L") & isin(gb, "L", "V", "LV", "LVT"), _JOIN),  # GB6
        (isin(ga, "LV", "V") & isin(gb, "V", "T"), _JOIN),  # GB7
        (isin(ga, "LVT", "T") & isin(gb, "T"), _JOIN),  # GB8
        (isin(gb, "Extend", "ZWJ"), _JOIN),  # GB9
        (isin(gb, "SpacingMark"), _JOIN),  # GB9a
        (isin(ga, "Prepend"), _JOIN),  # GB9b
        # GB9c: a conjunct's linker/extend -> consonant depends on what came before; a
        # linker that does not join by GB9 (a few have GCB=Other) must stay in the
        # stretch regex sees, so the boundary before it is asked too.
        ((a & _INCB_EXTEND_OR_LINKER > 0) & (b & _INCB_CONSONANT > 0), _ASK),
        (b & _INCB_EXTEND_OR_LINKER > 0, _ASK),
        (isin(ga, "ZWJ") & (b & _EXT_PICT > 0), _ASK),  # GB11
        (isin(ga, "Regional_Indicator") & isin(gb, "Regional_Indicator"), _ASK),  # GB12/13
    ]
    table = np.full(a.shape[:1] + b.shape[1:], _BREAK, dtype=np.uint8)  # GB999
    todo = np.ones(table.shape, dtype=bool)
    for hit, decision in rules:
        hit = hit & todo
        table[hit] = decision
        todo &= ~hit
    return table


@functools.cache
def _tables() -> tuple[np.ndarray, np.ndarray]:
    """``(class of every code point, flattened pair table)``, built once (~0.2 s)."""
    every_code_point = "".join(map(chr, range(0x110000)))
    classes = np.zeros(0x110000, dtype=np.uint8)
    pattern = regex.compile("|".join(f"(\\p{{GCB={name}}}+)" for name in _GCB))
    for m in pattern.finditer(every_code_point):
        classes[m.start() : m.end()] = m.lastindex - 1
    for prop, flag in (
        ("Extended_Pictographic", _EXT_PICT),
        ("InCB=Consonant", _INCB_CONSONANT),
        ("InCB=Linker", _INCB_EXTEND_OR_LINKER),
        ("InCB=Extend", _INCB_EXTEND_OR_LINKER),
    ):
        for m in regex.finditer(rf"\p{{{prop}}}+", every_code_point):
            classes[m.start() : m.end()] |= flag
    return classes, _pair_rules().reshape(-1)


def grapheme_spans(text: str) -> np.ndarray:
    """Code-point length of each extended grapheme cluster of ``text`` (``int64`` array).

    Equivalent to ``[len(g) for g in regex.findall(r"\\X", text)]``, vectorised.
    """
    cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    return np.diff(np.append(_grapheme_starts(cps, text), len(cps)))


def _grapheme_starts(cps: np.ndarray, text: str | None = None) -> np.ndarray:
    """Indices of the code points of ``cps`` (``uint32``; ``text`` is the same string, if
    at hand) that start a grapheme cluster."""
    n = len(cps)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    classes, pairs = _tables()
    cls = classes[cps].astype(np.uint16)
    decision = np.empty(n, dtype=np.uint8)
    decision[0] = _BREAK
    pair = cls[:-1] << 7
    pair |= cls[1:]
    decision[1:] = pairs[pair]
    del cls, pair
    asked = np.nonzero(decision == _ASK)[0]
    if len(asked):
        _ask_regex(cps, text, decision, asked)
    return np.nonzero(decision == _BREAK)[0]


# Up to this many stretches are asked one by one (cheaper than the vectorised set-up).
_FEW_STRETCHES = 32


def _ask_regex(cps: np.ndarray, text: str | None, decision: np.ndarray, asked: np.ndarray) -> None:
    """Decide the ``_ASK`` boundaries of ``decision`` in place with ``regex``.

    Each asked boundary lies in a stretch between two certain breaks (no UAX #29 rule
    looks across a certain break, since the context of GB9c/GB11/GB12 is joined or asked),
    so each stretch can be segmented on its own.
    """
    n = len(cps)
    breaks = np.nonzero(decision == _BREAK)[0]  # breaks[0] == 0
    which = np.searchsorted(breaks, asked, side="right") - 1
    which = which[np.concatenate(([True], which[1:] != which[:-1]))]
    first = breaks[which]
    length = np.append(breaks, n)[which + 1] - first
    if len(first) <= _FEW_STRETCHES:
        for a, m in zip(first.tolist(), length.tolist(), strict=True):
            piece = text[a : a + m] if text is not None else cps[a : a + m].tobytes().decode(
                "utf-32-le", "surrogatepass"
            )
            decision[a : a + m] = _JOIN
            for g in _GRAPHEME.findall(piece):
                decision[a] = _BREAK
                a += len(g)
        return
    # All stretches through one findall, separated by NUL: a Control, so GB4/GB5 break on
    # both sides of it and the stretches cannot influence each other.
    total = int(length.sum())
    # src: the code points of the stretches in order; at: their place in the joined string.
    before = np.cumsum(length) - length
    within = np.arange(total) - np.repeat(before, length)
    src = np.repeat(first, length) + within
    at = np.repeat(before + np.arange(len(first)), length) + within
    joined = np.zeros(total + len(first), dtype="<u4")  # NUL after each stretch
    joined[at] = cps[src]
    graphemes = _GRAPHEME.findall(joined.tobytes().decode("utf-32-le", "surrogatepass"))
    lengths = np.fromiter(map(len, graphemes), dtype=np.int64, count=len(graphemes))
    origin = np.full(len(joined), -1, dtype=np.int64)
    origin[at] = src
    starts = origin[np.cumsum(lengths) - lengths]
    decision[src] = _JOIN
    decision[starts[starts >= 0]] = _BREAK


def chain_edges(num_nodes: int, skip: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """Edges ``i -> i + d`` for ``d`` in ``(1, *skip)``; returns ``(edge_index, hop)``."""
    if not skip:
        src = torch.arange(max(num_nodes - 1, 0))
        return torch.stack([src, src + 1]), torch.ones(src.numel(), dtype=torch.long)
    hops = (1, *sorted(set(skip) - {1}))
    parts, kinds = [], []
    for d in hops:
        if d < 1:
            raise ValueError(f"skip distances must be positive integers, got {d}")
        src = torch.arange(max(num_nodes - d, 0))
        parts.append(torch.stack([src, src + d]))
        kinds.append(torch.full((src.numel(),), d, dtype=torch.long))
    return torch.cat(parts, dim=1), torch.cat(kinds)


def text_to_graph(text: str, *, skip: tuple[int, ...] = ()) -> Data:
    """Turn ``text`` into a DAG with one node per extended grapheme cluster.

    Args:
        text: any string without lone surrogates; ``""`` gives a graph with 0 nodes.
        skip: extra edge distances (e.g. ``(2, 4)`` adds ``i -> i+2`` and ``i -> i+4``);
            when given, ``edge_attr`` (``long``, shape ``[E]``) holds each edge's hop
            distance (1 for reading-order edges).

    Returns:
        :class:`~torch_geometric.data.Data` with ``x`` (``uint8 [N, GRAPHEME_WIDTH]``, see
        the module docstring), ``edge_index`` (``long [2, E]``, ``i -> i+1``),
        ``grapheme_len`` (``long [N]``), ``text_bytes`` (``uint8 [num_bytes]``) and
        ``num_nodes``.
    """
    if not isinstance(text, str):
        raise TypeError(f"text_to_graph expects a str, got {type(text).__name__}")
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(
            f"text contains a lone surrogate code point at position {err.start} "
            f"({text[err.start]!r}); it has no UTF-8 encoding"
        ) from None
    m = len(raw)
    utf8 = np.frombuffer(raw, dtype=np.uint8)
    cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    byte_start = _grapheme_starts(cps, text)
    if m != len(cps):  # not ASCII: map code-point indices to UTF-8 lead-byte offsets
        byte_start = np.nonzero((utf8 & 0xC0) != 0x80)[0][byte_start]
    del cps  # temporaries are dropped early: peak memory stays a small multiple of the text
    n = len(byte_start)
    byte_len = np.empty(n, dtype=np.int64)
    np.subtract(byte_start[1:], byte_start[:-1], out=byte_len[:-1])
    if n:
        byte_len[-1] = m - byte_start[-1]
    # x[i, k] = utf8[byte_start[i] + k] + 1 inside the grapheme, PAD after it: gather rows
    # of a strided view (row j = bytes j..j+W-1, +1, zero-padded), then blank the tails.
    shifted = np.zeros(m + GRAPHEME_WIDTH, dtype=np.uint8)
    np.add(utf8, np.uint8(1), out=shifted[:m])
    x = np.ndarray((m + 1, GRAPHEME_WIDTH), np.uint8, shifted, 0, (1, 1))[byte_start]
    del shifted, byte_start
    x[_SLOTS >= byte_len[:, None]] = PAD
    if skip:
        edge_index, hop = chain_edges(n, skip)
    else:  # i -> i+1, built in place: 0..2n-3 as two rows, minus n-2 on the second
        e = max(n - 1, 0)
        chain = np.arange(2 * e, dtype=np.int64).reshape(2, e)
        chain[1] -= e - 1
        edge_index = torch.from_numpy(chain)
    data = Data(
        x=torch.from_numpy(x),
        edge_index=edge_index,
        grapheme_len=torch.from_numpy(byte_len),
        text_bytes=torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        if m
        else torch.zeros(0, dtype=torch.uint8),
        num_nodes=n,
    )
    if skip:
        data.edge_attr = hop
    return data


def decode_slots(classes: torch.Tensor) -> bytes:
    """Bytes of nodes given per-slot classes ``[N, GRAPHEME_WIDTH]`` (``x`` of
    :func:`text_to_graph`, or a model's most likely class per slot), in node order; each
    node's bytes end at its first :data:`PAD`."""
    if classes.numel() == 0:
        return b""
    classes = classes.to(torch.int64)
    alive = torch.cumprod((classes != PAD).long(), dim=1).bool()
    return bytes((classes[alive] - 1).clamp(0, 255).tolist())


def graph_to_text(data: Data) -> str:
    """Inverse of :func:`text_to_graph`: the exact original string.

    Uses the exact byte store (``text_bytes`` with ``grapheme_len``) when present, so
    graphemes longer than ``GRAPHEME_WIDTH`` bytes round-trip; otherwise decodes the
    slots of ``x`` row by row (nodes are taken in their stored order). Invalid UTF-8 (from
    a model, say) decodes with U+FFFD, never an exception.
    """
    text_bytes = getattr(data, "text_bytes", None)
    if text_bytes is not None and getattr(data, "grapheme_len", None) is not None:
        raw = text_bytes.detach().to("cpu", torch.uint8).numpy().tobytes()
        if len(raw) != int(data.grapheme_len.sum()):
            raise ValueError(
                f"text_bytes holds {len(raw)} bytes but grapheme_len sums to "
                f"{int(data.grapheme_len.sum())}: not a text_to_graph graph"
            )
        return raw.decode("utf-8", errors="replace")
    return decode_slots(data.x).decode("utf-8", errors="replace")


def graphs_to_texts(batch) -> list[str]:
    """Decode every graph of a collated :class:`~torch_geometric.data.Batch` of
    :func:`text_to_graph` graphs (exact, via the byte store)."""
    num_graphs = int(batch.num_graphs)
    bytes_per_graph = torch.zeros(num_graphs, dtype=torch.long)
    bytes_per_graph.index_add_(0, batch.batch.cpu(), batch.grapheme_len.cpu())
    chunks = torch.split(batch.text_bytes.detach().to("cpu", torch.uint8), bytes_per_graph.tolist())
    return [c.numpy().tobytes().decode("utf-8", errors="replace") for c in chunks]
