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
``regex`` package (``\\X``). Most text is segmented without it: a boundary between two
code points is certain when both have one of the Grapheme_Cluster_Break values ``Other``,
``Control``, ``LF``, ``LV`` or ``LVT`` (rules GB4, GB5 and GB999 decide; no rule joins
such a pair). Only the short stretches around other code points (combining marks, ZWJ,
regional indicators, Hangul jamo, CR, ...) go through ``regex``, which keeps conversion
vectorised and an order of magnitude faster than a per-character Python loop.
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

# Grapheme_Cluster_Break values between which UAX #29 always breaks (see module docstring).
_ALWAYS_BREAK = r"[\p{GCB=Other}\p{GCB=Control}\p{GCB=LF}\p{GCB=LV}\p{GCB=LVT}]+"
_GRAPHEME = regex.compile(r"\X")


@functools.cache
def _always_break_table() -> np.ndarray:
    """Boolean lookup over all code points, built once from ``regex``'s own tables."""
    table = np.zeros(0x110000, dtype=bool)
    every_code_point = "".join(map(chr, range(0x110000)))
    for m in regex.finditer(_ALWAYS_BREAK, every_code_point):
        table[m.start() : m.end()] = True
    return table


def _utf8_length(cps: np.ndarray) -> np.ndarray:
    return 1 + (cps >= 0x80) + (cps >= 0x800) + (cps >= 0x10000)


def grapheme_spans(text: str) -> np.ndarray:
    """Code-point length of each extended grapheme cluster of ``text`` (``int64`` array).

    Equivalent to ``[len(g) for g in regex.findall(r"\\X", text)]``, vectorised.
    """
    cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    return np.diff(np.append(_grapheme_starts(cps), len(cps)))


def _grapheme_starts(cps: np.ndarray) -> np.ndarray:
    """Indices of the code points of ``cps`` (``uint32``) that start a grapheme cluster."""
    n = len(cps)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    simple = _always_break_table()[cps] | (cps == 0x0D)  # CR breaks like LF but for GB3
    crlf = np.zeros(n, dtype=bool)
    crlf[1:] = (cps[:-1] == 0x0D) & (cps[1:] == 0x0A)
    certain = np.ones(n, dtype=bool)  # certain[i]: the boundary before i is decided here
    certain[1:] = simple[1:] & simple[:-1]
    starts = certain & ~crlf
    uncertain = ~certain
    if uncertain.any():
        # Each maximal run of undecided boundaries, with the code point before it, is a
        # span whose own ends are certain breaks. All spans go through one regex call,
        # joined by NUL: a Control, so GB4/GB5 break on both sides of it and the spans
        # cannot influence each other.
        run_open = uncertain & ~np.r_[False, uncertain[:-1]]
        span_head = np.r_[run_open[1:], False]
        pos = np.flatnonzero(uncertain | span_head)
        cut = np.flatnonzero(span_head[pos])[1:]
        joined = np.insert(cps[pos], cut, 0).astype("<u4").tobytes()
        graphemes = _GRAPHEME.findall(joined.decode("utf-32-le", "surrogatepass"))
        lengths = np.fromiter(map(len, graphemes), dtype=np.int64, count=len(graphemes))
        origin = np.insert(pos, cut, -1)[np.r_[0, np.cumsum(lengths)[:-1]]]
        starts[pos] = False
        starts[origin[origin >= 0]] = True
        starts &= ~crlf  # a span may open on the LF of a CRLF, which regex saw alone
    return np.flatnonzero(starts)


def _check_text(text: str) -> None:
    if not isinstance(text, str):
        raise TypeError(f"text_to_graph expects a str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(
            f"text contains a lone surrogate code point at position {err.start} "
            f"({text[err.start]!r}); it has no UTF-8 encoding"
        ) from None


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
    _check_text(text)
    utf8 = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    cp_byte_start = np.flatnonzero((utf8 & 0xC0) != 0x80)  # UTF-8 lead bytes
    byte_start = cp_byte_start[_grapheme_starts(cps)]
    byte_len = np.diff(np.append(byte_start, len(utf8)))
    # x[i, k] = utf8[byte_start[i] + k] + 1 inside the grapheme, PAD after it.
    windows = np.lib.stride_tricks.sliding_window_view(
        np.r_[utf8, np.zeros(GRAPHEME_WIDTH, dtype=np.uint8)], GRAPHEME_WIDTH
    )
    x = windows[byte_start] + np.uint8(1)
    x[np.arange(GRAPHEME_WIDTH)[None, :] >= byte_len[:, None]] = PAD
    n = len(byte_start)
    edge_index, hop = chain_edges(n, skip)
    data = Data(
        x=torch.from_numpy(x),
        edge_index=edge_index,
        grapheme_len=torch.from_numpy(byte_len.astype(np.int64)),
        text_bytes=torch.from_numpy(utf8.copy()),
        num_nodes=n,
    )
    if skip:
        data.edge_attr = hop
    return data


def slots_to_bytes(x: torch.Tensor) -> bytes:
    """UTF-8 bytes of nodes encoded as slots (``x`` as in :func:`text_to_graph`), in row
    order; pad slots are dropped."""
    flat = x.reshape(-1).to(torch.int64)
    return bytes((flat[flat > PAD] - 1).tolist())


def graph_to_text(data: Data) -> str:
    """Inverse of :func:`text_to_graph`: the exact original string.

    Uses the exact byte store (``text_bytes`` with ``grapheme_len``) when present, so
    graphemes longer than ``GRAPHEME_WIDTH`` bytes round-trip; otherwise decodes the
    slots of ``x`` row by row (nodes are taken in their stored order). Invalid UTF-8 (from
    a model, say) decodes with U+FFFD, never an exception.
    """
    if getattr(data, "text_bytes", None) is not None and getattr(data, "grapheme_len", None) is not None:
        raw = bytes(data.text_bytes.to(torch.uint8).tolist())
        if len(raw) != int(data.grapheme_len.sum()):
            raise ValueError(
                f"text_bytes holds {len(raw)} bytes but grapheme_len sums to "
                f"{int(data.grapheme_len.sum())}: not a text_to_graph graph"
            )
        return raw.decode("utf-8", errors="replace")
    return slots_to_bytes(data.x).decode("utf-8", errors="replace")


def graphs_to_texts(batch) -> list[str]:
    """Decode every graph of a collated :class:`~torch_geometric.data.Batch` of
    :func:`text_to_graph` graphs (exact, via the byte store)."""
    num_graphs = int(batch.num_graphs)
    bytes_per_graph = torch.zeros(num_graphs, dtype=torch.long)
    bytes_per_graph.index_add_(0, batch.batch.cpu(), batch.grapheme_len.cpu())
    chunks = torch.split(batch.text_bytes.cpu(), bytes_per_graph.tolist())
    return [bytes(c.tolist()).decode("utf-8", errors="replace") for c in chunks]
