"""Convert a pair file (default: the shipped kindergarten set) to graphs and summarise it.

    python -m pyg_grapheme.data.summary [FILE]

Reads the pairs, builds one :class:`~pyg_grapheme.data.PairData` per pair, collates them
all with PyG's ``DataLoader``, decodes every graph of the batch back to text and checks it
against the file. Exits with status 1 if any pair fails to round-trip.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from torch_geometric.loader import DataLoader

from pyg_grapheme.data.datasets import kindergarten_path
from pyg_grapheme.data.formats import detect_format, read_pairs
from pyg_grapheme.data.graphemes import GRAPHEME_WIDTH, graphs_to_texts
from pyg_grapheme.data.pair import FOLLOW_BATCH, PairData, split_pair_batch


def _graphemes(graph, i: int) -> list[str]:
    """The graphemes of graph ``i`` of a batch, from its byte store."""
    start, end = int(graph.ptr[i]), int(graph.ptr[i + 1])
    lengths = graph.grapheme_len[start:end].tolist()
    offset = int(graph.grapheme_len[: start].sum())
    raw = bytes(graph.text_bytes[offset : offset + sum(lengths)].tolist())
    out, pos = [], 0
    for n in lengths:
        out.append(raw[pos : pos + n].decode("utf-8"))
        pos += n
    return out


def summarise(path: str | Path, examples: int = 4) -> tuple[str, bool]:
    """The summary text of a pair file and whether every pair round-tripped."""
    pairs = read_pairs(path)
    data = [PairData.from_texts(s, t) for s, t in pairs]
    batch = next(iter(DataLoader(data, batch_size=len(data), follow_batch=FOLLOW_BATCH)))
    inputs, targets = split_pair_batch(batch)
    decoded = list(zip(graphs_to_texts(inputs), graphs_to_texts(targets), strict=True))
    ok = sum(d == p for d, p in zip(decoded, pairs, strict=True))

    def stats(graph) -> str:
        counts = graph.ptr.diff()
        wide = int((graph.grapheme_len > 1).sum())
        long = int((graph.grapheme_len > GRAPHEME_WIDTH).sum())
        return (f"{graph.num_nodes} nodes (per graph {int(counts.min())}-{int(counts.max())}), "
                f"{graph.edge_index.size(1)} edges, {wide} multi-byte graphemes, "
                f"{long} over {GRAPHEME_WIDTH} bytes")

    lines = [
        f"source      {path} ({detect_format(path)} format)",
        f"pairs       {len(pairs)}",
        f"inputs      {stats(inputs)}",
        f"targets     {stats(targets)}",
        f"batch       x_s {tuple(batch.x_s.shape)} {batch.x_s.dtype}, "
        f"x_t {tuple(batch.x_t.shape)} {batch.x_t.dtype}, follow_batch={FOLLOW_BATCH}",
        f"round trip  {ok}/{len(pairs)} pairs decode exactly from the collated batch",
        "examples",
    ]
    # The first few pairs and the non-ASCII ones (where segmentation matters).
    chosen = list(range(min(examples, len(pairs))))
    chosen += [i for i, (_, t) in enumerate(pairs) if not t.isascii()][:examples]
    for i in dict.fromkeys(chosen):
        s, t = decoded[i]
        lines.append(f"  {s!r} -> {t!r}   target graphemes {_graphemes(targets, i)}")
    return "\n".join(lines), ok == len(pairs)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pyg_grapheme.data.summary",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?", type=Path, default=None,
                        help="QA or math JSON Lines file (default: the kindergarten set)")
    args = parser.parse_args(argv)
    text, ok = summarise(args.file or kindergarten_path())
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
