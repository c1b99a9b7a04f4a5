"""Benchmark: text -> grapheme graph conversion speed and memory on 10 MB of mixed text.

    python experiments/bench_convert.py [--mb 10] [--seed 0] [--repeat 3] [--baseline-repeat 1]
        [--out experiments/results/bench_convert.json]

The text is generated (seeded) as CRLF-terminated paragraphs of sentences; by sentence:

  ======================  =====  ==================================================
  kind                    share  what it exercises
  ======================  =====  ==================================================
  Latin prose             55 %   ASCII words, precomposed accents (é ü ñ ç ø ß), 1 word
                                 in 12 with combining marks (e + U+0301, stacked marks)
  CJK                     10 %   Han ideographs, kana, ideographic punctuation
  Arabic                  10 %   letters, 1 word in 3 with harakat (combining marks)
  Hangul                  10 %   precomposed syllables (LV/LVT), 1 word in 6 as
                                 conjoining jamo (L V T sequences)
  Devanagari               5 %   vowel signs, virama conjuncts
  emoji-rich               10 %  Latin sentence + emoji: single, skin tones, ZWJ
                                 sequences (families, professions), flags, keycaps, VS16
  ======================  =====  ==================================================

plus an emoji after 1 Latin sentence in 10. Rows of the table:

* ``text_to_graph``: the package's converter (vectorised; ``regex`` only around code
  points where UAX #29 needs it).
* ``per-char loop``: a plain Python loop over code points building the equivalent
  per-character graph (padded byte rows, chain edges, lengths) -- the baseline of the
  issue. It does *not* segment graphemes, so it makes more nodes than graphemes.
* ``regex \\X loop``: the straightforward correct version: ``regex.findall(r"\\X")``
  then the same per-node Python loop.

Each converter runs on the whole text in one call ("bulk") and on each CRLF paragraph
separately ("per paragraph", the dataset-style use: many short texts). Rates are nodes/s
(graphemes/s for the grapheme converters) and MB/s of UTF-8 input; "speed-up" is the
baseline's wall time over ``text_to_graph``'s on the same text. Memory: the peak resident
set growth during one bulk conversion (Linux ``/proc/self/clear_refs`` + ``VmHWM``), the
tracemalloc peak (Python and NumPy allocations), and the size of the result, each per MB
of text; plus the number of gc-tracked Python objects the result keeps alive.
``--out FILE.json`` writes the rows and the memory figures, for the README's speed table
(``experiments/readme_tables.py``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path

import regex
import torch
from torch_geometric.data import Data

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyg_grapheme.data.graphemes import (  # noqa: E402
    GRAPHEME_WIDTH,
    _tables,
    graph_to_text,
    grapheme_spans,
    text_to_graph,
)

# ----------------------------------------------------------------------------- the text

_LATIN_WORDS = (
    "the of and to in is that it was for on are as with his they at be this from have or by "
    "one had not but what all were when we there can an your which their said if do will each "
    "about how up out them then she many some so these would other into has more her two like "
    "him see time could no make than first been its who now people my made over did down only "
    "way find use may water long little very after words called just where most know graph "
    "node edge model text river mountain garden window morning evening question answer"
).split()
_ACCENTED_WORDS = (
    "café naïve résumé façade über straße piñata crème brûlée smörgåsbord déjà señor "
    "fiancée coördinate jalapeño Ångström søster garçon"
).split()
_COMBINING = ["\u0301", "\u0300", "\u0308", "\u0327", "\u0303", "\u030a", "\u0323"]
_ARABIC_LETTERS = [chr(c) for c in range(0x0627, 0x064B) if chr(c).isalpha()]
_HARAKAT = ["\u064e", "\u064f", "\u0650", "\u0651", "\u0652"]
_DEVANAGARI_CONS = [chr(c) for c in range(0x0915, 0x0939)]
_DEVANAGARI_VOWEL_SIGNS = [chr(c) for c in range(0x093E, 0x094D)]
_EMOJI = [
    "\U0001F600", "\U0001F431", "\U0001F436", "\U0001F680", "\u2764\ufe0f", "\u2600\ufe0f",
    "\U0001F44D\U0001F3FD", "\U0001F44B\U0001F3FF",  # skin tones
    "\U0001F468\u200d\U0001F469\u200d\U0001F467\u200d\U0001F466",  # family (ZWJ)
    "\U0001F469\u200d\U0001F4BB", "\U0001F9D1\u200d\U0001F680",  # professions (ZWJ)
    "\U0001F3F3\ufe0f\u200d\U0001F308",  # rainbow flag (ZWJ)
    "\U0001F1EF\U0001F1F5", "\U0001F1EB\U0001F1F7", "\U0001F1E7\U0001F1F7",  # flags
    "1\ufe0f\u20e3", "#\ufe0f\u20e3",  # keycaps
]


def _latin_word(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.06:
        return rng.choice(_ACCENTED_WORDS)
    word = rng.choice(_LATIN_WORDS)
    if r < 0.06 + 1 / 12:  # combining marks (decomposed accents; now and then stacked)
        i = rng.randrange(len(word))
        marks = "".join(rng.choice(_COMBINING) for _ in range(rng.choice((1, 1, 1, 2, 3))))
        word = word[: i + 1] + marks + word[i + 1 :]
    return word


def _sentence(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.55 or r >= 0.90:
        words = [_latin_word(rng) for _ in range(rng.randint(6, 18))]
        words[0] = words[0].capitalize()
        s = " ".join(words) + rng.choice(".....?!")
        if r >= 0.90:  # emoji-rich
            for _ in range(rng.randint(1, 4)):
                k = rng.randrange(len(words))
                words.insert(k, rng.choice(_EMOJI))
            s = " ".join(words) + "."
        elif rng.random() < 0.1:
            s += " " + rng.choice(_EMOJI)
        return s
    if r < 0.65:  # CJK
        chars = [chr(rng.randint(0x4E00, 0x9FFF)) if rng.random() < 0.7
                 else chr(rng.randint(0x3041, 0x3096)) for _ in range(rng.randint(10, 40))]
        return "".join(chars) + rng.choice("。。、！？")
    if r < 0.75:  # Arabic
        words = []
        for _ in range(rng.randint(5, 14)):
            letters = [rng.choice(_ARABIC_LETTERS) for _ in range(rng.randint(2, 7))]
            if rng.random() < 1 / 3:
                letters = [c + rng.choice(_HARAKAT) for c in letters]
            words.append("".join(letters))
        return " ".join(words) + rng.choice(".؟")
    if r < 0.85:  # Hangul
        words = []
        for _ in range(rng.randint(4, 12)):
            n = rng.randint(1, 4)
            if rng.random() < 1 / 6:  # conjoining jamo: L V (T)
                w = "".join(chr(0x1100 + rng.randrange(19)) + chr(0x1161 + rng.randrange(21))
                            + (chr(0x11A8 + rng.randrange(27)) if rng.random() < 0.5 else "")
                            for _ in range(n))
            else:
                w = "".join(chr(rng.randint(0xAC00, 0xD7A3)) for _ in range(n))
            words.append(w)
        return " ".join(words) + "."
    words = []  # Devanagari
    for _ in range(rng.randint(4, 12)):
        w = ""
        for _ in range(rng.randint(1, 4)):
            w += rng.choice(_DEVANAGARI_CONS)
            if rng.random() < 0.2:
                w += "\u094d" + rng.choice(_DEVANAGARI_CONS)  # virama conjunct
            if rng.random() < 0.6:
                w += rng.choice(_DEVANAGARI_VOWEL_SIGNS)
        words.append(w)
    return " ".join(words) + "\u0964"


def mixed_text(num_bytes: int, seed: int = 0) -> str:
    """Seeded mixed-script text of about ``num_bytes`` UTF-8 bytes (CRLF paragraphs)."""
    rng = random.Random(seed)
    parts, size = [], 0
    while size < num_bytes:
        para = " ".join(_sentence(rng) for _ in range(rng.randint(2, 8))) + "\r\n"
        parts.append(para)
        size += len(para.encode("utf-8"))
    return "".join(parts)


# ----------------------------------------------------------------------------- baselines


def _loop_graph(units) -> Data:
    """The per-node Python loop: padded byte rows, chain edges, lengths, byte store."""
    rows, lengths, src, dst, store = [], [], [], [], bytearray()
    for i, unit in enumerate(units):
        b = unit.encode("utf-8")
        row = [c + 1 for c in b[:GRAPHEME_WIDTH]]
        row += [0] * (GRAPHEME_WIDTH - len(row))
        rows.append(row)
        lengths.append(len(b))
        store += b
        if i:
            src.append(i - 1)
            dst.append(i)
    n = len(rows)
    return Data(
        x=torch.tensor(rows, dtype=torch.uint8).reshape(n, GRAPHEME_WIDTH),
        edge_index=torch.tensor([src, dst], dtype=torch.long).reshape(2, -1),
        grapheme_len=torch.tensor(lengths, dtype=torch.long),
        text_bytes=torch.frombuffer(store, dtype=torch.uint8) if store else torch.zeros(0),
        num_nodes=n,
    )


def per_char_loop(text: str) -> Data:
    return _loop_graph(text)


_X = regex.compile(r"\X")


def regex_loop(text: str) -> Data:
    return _loop_graph(_X.findall(text))


# ----------------------------------------------------------------------------- measuring


def _time(fn, texts, repeat: int) -> tuple[float, int]:
    best, nodes = float("inf"), 0
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        nodes = sum(fn(t).num_nodes for t in texts)
        best = min(best, time.perf_counter() - t0)
    return best, nodes


def _proc_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def memory_probe(num_bytes: int, seed: int) -> dict[str, float]:
    """Memory of one bulk conversion, measured in this (fresh) process."""
    text = mixed_text(num_bytes, seed)
    mb = len(text.encode("utf-8")) / 1e6
    _tables()
    text_to_graph(text[:10_000])  # first-call set-up (torch, NumPy) outside the measure
    out: dict[str, float] = {}
    gc.collect()
    try:  # reset the peak resident set size (Linux >= 4.0)
        Path("/proc/self/clear_refs").write_text("5")
        before = _proc_kib("VmRSS")
    except OSError:
        before = None
    objects_before = len(gc.get_objects())
    tracemalloc.start()
    graph = text_to_graph(text)
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    peak = _proc_kib("VmHWM")
    gc.collect()
    out["kept_objects"] = len(gc.get_objects()) - objects_before
    if before is not None and peak is not None:
        out["rss_peak_mb_per_mb"] = (peak - before) / 1024 / mb
    out["tracemalloc_peak_mb_per_mb"] = traced_peak / 1e6 / mb
    stored = graph.to_dict()
    result_bytes = sum(v.nbytes for v in stored.values() if torch.is_tensor(v))
    out["result_mb_per_mb"] = result_bytes / 1e6 / mb
    out["non_tensor_attrs"] = sum(
        1 for k, v in stored.items() if not torch.is_tensor(v) and k != "num_nodes"
    )
    out["nodes"] = graph.num_nodes
    out["mb"] = mb
    return out


def memory(num_bytes: int, seed: int) -> dict[str, float]:
    """:func:`memory_probe` in a fresh interpreter, so earlier runs do not hide the peak."""
    cmd = [sys.executable, __file__, "--memory-probe", "--mb", str(num_bytes / 1e6),
           "--seed", str(seed)]
    result = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=10.0, help="text size in MB (1e6 bytes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3,
                        help="text_to_graph: best of this many runs")
    parser.add_argument("--baseline-repeat", type=int, default=1,
                        help="the Python loops: best of this many runs (each takes ~1 min)")
    parser.add_argument("--memory-probe", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help="write the rows and memory figures as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.memory_probe:
        print(json.dumps(memory_probe(int(args.mb * 1e6), args.seed)))
        return None
    load = os.getloadavg()[0]

    t0 = time.perf_counter()
    text = mixed_text(int(args.mb * 1e6), args.seed)
    gen_s = time.perf_counter() - t0
    utf8 = len(text.encode("utf-8"))
    paragraphs = text.splitlines(keepends=True)
    t0 = time.perf_counter()
    _tables()  # one-time lookup tables, built on first use
    table_s = time.perf_counter() - t0

    graph = text_to_graph(text)  # correctness before speed
    assert graph_to_text(graph) == text
    graphemes = len(_X.findall(text))
    assert graph.num_nodes == graphemes, (graph.num_nodes, graphemes)

    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, "
          f"torch threads {torch.get_num_threads()}, cpu count {os.cpu_count()}")
    print(f"text: {utf8 / 1e6:.2f} MB UTF-8, {len(text):,} code points, {graphemes:,} "
          f"graphemes, {len(paragraphs):,} CRLF paragraphs (mean {utf8 / len(paragraphs):.0f} "
          f"B); generated in {gen_s:.1f} s; lookup table built once in {table_s:.2f} s")
    spans = grapheme_spans(text)
    glen = graph.grapheme_len
    print(f"graphemes: {100 * float((glen == 1).float().mean()):.1f} % ASCII, "
          f"{100 * float((spans > 1).mean()):.1f} % of several code points (marks, ZWJ, "
          f"flags, jamo, conjuncts, CRLF), {int((glen > GRAPHEME_WIDTH).sum()):,} longer than "
          f"{GRAPHEME_WIDTH} bytes (overflow store)")
    print(f"round trip of the whole text: exact; best of {args.repeat} runs for "
          f"text_to_graph, {args.baseline_repeat} for the loops\n")

    header = f"{'mode':<14}{'converter':<17}{'nodes':>12}{'seconds':>10}{'nodes/s':>14}" \
             f"{'MB/s':>8}{'speed-up':>10}"
    print(header)
    print("-" * len(header))
    measured = []
    for mode, texts in (("bulk", [text]), ("per paragraph", paragraphs)):
        ours, n_ours = _time(text_to_graph, texts, args.repeat)
        rows = [("text_to_graph", ours, n_ours)]
        for name, fn in (("per-char loop", per_char_loop), ("regex \\X loop", regex_loop)):
            t, n = _time(fn, texts, args.baseline_repeat)
            rows.append((name, t, n))
        for name, t, n in rows:
            measured.append({"mode": mode, "converter": name, "nodes": n, "seconds": t,
                             "speed_up": t / ours})
            print(f"{mode if name == rows[0][0] else '':<14}{name:<17}{n:>12,}{t:>10.2f}"
                  f"{n / t:>14,.0f}{utf8 / 1e6 / t:>8.2f}{t / ours:>9.1f}x")
    print()

    mem = memory(int(args.mb * 1e6), args.seed)
    print(f"memory, one bulk conversion of {mem['mb']:.1f} MB ({mem['nodes']:,} nodes), "
          "measured in a fresh process:")
    if "rss_peak_mb_per_mb" in mem:
        print(f"  peak RSS growth      {mem['rss_peak_mb_per_mb']:6.1f} MB per MB of text")
    print(f"  tracemalloc peak     {mem['tracemalloc_peak_mb_per_mb']:6.1f} MB per MB of text "
          "(Python + NumPy allocations; torch's own are not traced)")
    print(f"  result tensors       {mem['result_mb_per_mb']:6.1f} MB per MB of text "
          "(x 8 B + edge_index 16 B + grapheme_len 8 B per node, 1 B per text byte)")
    print(f"  Python objects kept  {mem['kept_objects']:+d} gc-tracked objects for "
          f"{mem['nodes']:,} nodes; {mem['non_tensor_attrs']} non-tensor attributes")
    result = {"mb": utf8 / 1e6, "graphemes": graphemes, "repeat": args.repeat,
              "baseline_repeat": args.baseline_repeat, "seed": args.seed,
              "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
              "torch": torch.__version__, "load": load, "rows": measured, "memory": mem}
    if args.out:
        from readme_tables import write_result  # experiments/ is the script's path

        write_result(args.out, "bench_convert", "bench_convert.py", result, argv)
        print(f"results written to {args.out}")
    return result


if __name__ == "__main__":
    main()
