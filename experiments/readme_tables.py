"""Write, or check, the generated tables of README.md and docs/*.md from committed results.

A table in a page between ``<!-- generated: NAME -->`` and ``<!-- end generated -->`` is
rendered from ``experiments/results/NAME.json`` (what an experiment wrote with ``--out``;
several runs of it are listed under ``"runs"``), so its figures are the measured ones and
cannot drift by hand; a name in :data:`SECTIONS` renders one table from several files
(the README's speed table: a row per benchmark), the other names a file's full table by
its ``"kind"`` (:data:`RENDERERS`; the docs pages show the benchmarks' full tables).
``tests/test_readme.py`` runs the check. The benchmarks write their files with
:func:`write_result`.

    python experiments/readme_tables.py            # rewrite the generated sections
    python experiments/readme_tables.py --check    # exit 1 naming a stale section
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
#: The pages whose generated sections :func:`main` keeps current.
PAGES: tuple[Path, ...] = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
SECTION = re.compile(
    r"(<!-- generated: (?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.S)


def _experiment(name: str):
    """``experiments/NAME.py`` as a module (loaded once)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _baseline():
    return _experiment("baseline_seq2seq")


def comparison(payload: dict) -> str:
    """``baseline_seq2seq.py --out`` files, one or several runs: the full table
    (``format_table``, rows ordered by task then model) and the commands."""
    base = _baseline()
    runs = payload.get("runs", [payload])
    results = [base.Result(**r) for run in runs for r in run["results"]]
    tasks = list(dict.fromkeys(r.task for r in results))
    order = {m: i for i, m in enumerate(("graph", "gru", "transformer"))}
    results.sort(key=lambda r: (tasks.index(r.task), order.get(r.model.split("[")[0], 9),
                                r.model, r.seed))
    commands = "\n".join(run["command"] for run in runs if run.get("command"))
    text = base.format_table(results) + "\n"
    if payload.get("about"):
        text += "\n" + payload["about"] + "\n"
    if commands:
        text += "\n```\n" + commands + "\n```\n"
    return text


def ablation(payload: dict) -> str:
    """``objective_ablation.py --out`` files: objective | kindergarten | math1
    (``format_table``) and the command."""
    text = _experiment("objective_ablation").format_table(payload)
    if payload.get("about"):
        text += "\n" + payload["about"] + "\n"
    if payload.get("command"):
        text += "\n```\n" + payload["command"] + "\n```\n"
    return text


def write_result(path: Path, kind: str, script: str, payload: dict,
                 argv: Sequence[str] | None = None) -> None:
    """An experiment's ``--out`` file: ``payload`` with its ``kind`` (which renderer
    reads it) and the ``command`` that reproduces it, written atomically (the writer
    ``objective_ablation.py --out`` uses), so a stopped run leaves the previous file."""
    from pyg_grapheme._io import atomic_write_bytes

    words = sys.argv[1:] if argv is None else list(argv)
    env = "OMP_NUM_THREADS=1 " if os.environ.get("OMP_NUM_THREADS") == "1" else ""
    full = {"kind": kind,
            "command": env + shlex.join(["python", f"experiments/{script}", *words]),
            **payload}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(full, indent=1, ensure_ascii=False) + "\n").encode())


def _load(name: str) -> tuple[Path, dict]:
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"README section {name!r}: no result file {path}")
    return path, json.loads(path.read_text())


def _setting(payload: dict) -> str:
    return (f"{payload['threads']} torch thread, 1-min load {payload['load']:.1f} on "
            f"{payload['cpus']} cores")


def model_row(payload: dict) -> str:
    """``bench_model.py --out``: forward+backward graphs/s per canvas, each layer form."""
    rows = payload["model"]
    cells = []
    for block in dict.fromkeys(r["block"] for r in rows):
        mine = [r for r in rows if r["block"] == block]
        rates = " / ".join(f"{r['forward_backward']:.0f}" for r in mine)
        canvas = " / ".join(str(r["canvas"]) for r in mine)
        cells.append(f"{rates} graphs/s at canvas {canvas} (`{block}`, "
                     f"{mine[0]['parameters']:,} parameters at canvas {mine[0]['canvas']})")
    return (f"| GraphTransformNet forward+backward with `segmentation_nll`, batch of 64 QA "
            f"graphs (20-60 graphemes), median of {payload['repeats']} | "
            f"{'; '.join(cells)}; {_setting(payload)} | `{payload['command']}` |\n")


def pool_row(payload: dict) -> str:
    """``bench_pool.py --out``: CPU time of the pool against PyG's pooling layers."""
    cpu = {name: t["cpu_s"] for name, t in payload["layers"].items()}
    ours = cpu["ThresholdMergePool"]
    return (f"| ThresholdMergePool forward+backward, {payload['graphs']} chains x "
            f"{payload['length']} nodes, {payload['dim']}-dim, median CPU time of "
            f"{payload['repeats']} interleaved rounds | "
            f"{cpu['EdgePooling'] / ours:.1f}x faster than EdgePooling, "
            f"{ours / cpu['TopKPooling(0.5)']:.2f}x TopKPooling's time ({1e3 * ours:.2f} ms); "
            f"{_setting(payload)} | `{payload['command']}` |\n")


def convert_row(payload: dict) -> str:
    """``bench_convert.py --out``: text_to_graph's speed-up over the per-character loop."""
    loop = {r["mode"]: r for r in payload["rows"] if r["converter"] == "per-char loop"}
    ours = next(r for r in payload["rows"]
                if r["converter"] == "text_to_graph" and r["mode"] == "bulk")
    return (f"| text -> graph, {payload['mb']:.0f} MB of mixed text (seed "
            f"{payload['seed']}), best of {payload['repeat']} | "
            f"{loop['bulk']['speed_up']:.1f}x a per-character Python loop in one call, "
            f"{loop['per paragraph']['speed_up']:.1f}x per paragraph; "
            f"{ours['nodes'] / ours['seconds'] / 1e6:.2f}M graphemes/s; "
            f"{_setting(payload)} | `{payload['command']}` |\n")


def dataset_row(payload: dict) -> str:
    """``bench_dataset.py --out``: peak memory of building a dataset cache, and loading it."""
    build, load = _stages(payload)
    return (f"| dataset cache from a {payload['file_mb']:.0f} MB QA JSONL file "
            f"({payload['pairs']:,} pairs), built then loaded, each in a fresh process | "
            f"peak RSS {build['peak_mb'] / 1e3:.1f} GB building (growth "
            f"{_growth(build, payload):.0f}x the file), {load['peak_mb'] / 1e3:.1f} GB loading; "
            f"the cache {payload['cache_mb'] / 1e3:.2f} GB "
            f"({payload['cache_mb'] / payload['file_mb']:.0f}x the file); "
            f"{_setting(payload)} | `{payload['command']}` |\n")


def _stages(payload: dict) -> tuple[dict, dict]:
    stages = {s["stage"]: s for s in payload["stages"]}
    return stages["build"], stages["load"]


def _growth(stage: dict, payload: dict) -> float:
    """Peak RSS over the bare interpreter's, as a multiple of the file's size."""
    return (stage["peak_mb"] - stage["base_mb"]) / payload["file_mb"]


def _footer(payload: dict) -> str:
    """The end of a full table's note: the setting and the command that wrote the file."""
    return f"{_setting(payload)}, one run:\n\n```\n{payload['command']}\n```\n"


def pool_table(payload: dict) -> str:
    """``bench_pool.py --out``, docs/pooling.md: every layer's CPU and wall time."""
    layers = payload["layers"]
    ours = layers["ThresholdMergePool"]
    text = ("| layer | CPU ms fwd+bwd | wall ms | CPU time relative to ThresholdMergePool |\n"
            "|---|---|---|---|\n")
    for name, t in sorted(layers.items(), key=lambda kv: kv[1]["cpu_s"]):
        text += (f"| {name} | {1e3 * t['cpu_s']:.2f} | {1e3 * t['wall_s']:.2f} | "
                 f"{t['cpu_s'] / ours['cpu_s']:.2f}x |\n")
    edge, top = layers["EdgePooling"], layers["TopKPooling(0.5)"]
    text += (f"\nEdgePooling / ours = {edge['cpu_s'] / ours['cpu_s']:.1f}x CPU, "
             f"{edge['wall_s'] / ours['wall_s']:.1f}x wall (target >= 10x); ours / TopKPooling "
             f"= {ours['cpu_s'] / top['cpu_s']:.2f}x CPU, {ours['wall_s'] / top['wall_s']:.2f}x "
             f"wall (target <= 2x). {payload['graphs']} chains x {payload['length']} nodes, "
             f"{payload['dim']}-dim, {payload['kept_nodes']} of "
             f"{payload['graphs'] * payload['length']} nodes kept, median of "
             f"{payload['repeats']} interleaved rounds; ")
    return text + _footer(payload)


def convert_table(payload: dict) -> str:
    """``bench_convert.py --out``, docs/data.md: rates and speed-ups per mode, memory."""
    rows = {(r["mode"], r["converter"]): r for r in payload["rows"]}
    text = ("| mode | text_to_graph | per-char loop | speed-up | regex `\\X` loop | speed-up |\n"
            "|---|---|---|---|---|---|\n")
    for mode, label in (("bulk", f"bulk (one {payload['mb']:.0f} MB string)"),
                        ("per paragraph", "per paragraph (one call per CRLF paragraph)")):
        ours, loop, rx = (rows[mode, c] for c in ("text_to_graph", "per-char loop",
                                                   "regex \\X loop"))
        rate = ours["nodes"] / ours["seconds"] / 1e6
        mb_s = f" ({payload['mb'] / ours['seconds']:.1f} MB/s)" if mode == "bulk" else ""
        text += (f"| {label} | {rate:.2f} M graphemes/s{mb_s} | "
                 f"{loop['nodes'] / loop['seconds'] / 1e6:.3f} M chars/s | "
                 f"**{loop['speed_up']:.1f}x** | {rx['nodes'] / rx['seconds'] / 1e6:.3f} M "
                 f"graphemes/s | {rx['speed_up']:.1f}x |\n")
    mem = payload["memory"]
    rss = (f"peak RSS growth {mem['rss_peak_mb_per_mb']:.1f} MB per MB of text; "
           if "rss_peak_mb_per_mb" in mem else "")
    text += (f"\nMemory of one bulk conversion of {mem['mb']:.0f} MB ({mem['nodes']:,} nodes) "
             f"in a fresh process: {rss}tracemalloc peak {mem['tracemalloc_peak_mb_per_mb']:.1f}"
             f" MB per MB; result tensors {mem['result_mb_per_mb']:.1f} MB per MB; "
             f"gc-tracked Python objects {mem['kept_objects']:+d} after it. Best of "
             f"{payload['repeat']} runs for text_to_graph, {payload['baseline_repeat']} for "
             f"the loops; ")
    return text + _footer(payload)


def dataset_table(payload: dict) -> str:
    """``bench_dataset.py --out``, docs/data.md: peak RSS of the cache build and load."""
    text = ("| stage | pairs | peak RSS MB | over the interpreter's | x file size | s |\n"
            "|---|---|---|---|---|---|\n")
    for s in payload["stages"]:
        text += (f"| {s['stage']} | {s['pairs']:,} | {s['peak_mb']:.0f} | "
                 f"{s['peak_mb'] - s['base_mb']:.0f} | {_growth(s, payload):.1f} | "
                 f"{s['seconds']:.1f} |\n")
    text += (f"\nA {payload['file_mb']:.1f} MB file; the cache is {payload['cache_mb']:.0f} MB "
             f"({payload['cache_mb'] / payload['file_mb']:.1f}x the file); ")
    return text + _footer(payload)


#: How each result file is rendered (by its "kind"; default: the comparison table).
RENDERERS: dict[str, Callable[[dict], str]] = {
    "comparison": comparison, "ablation": ablation, "bench_pool": pool_table,
    "bench_convert": convert_table, "bench_dataset": dataset_table}
#: Table rows, one per result file, for the sections of :data:`SECTIONS`.
ROWS: dict[str, Callable[[dict], str]] = {"bench_model": model_row, "bench_pool": pool_row,
                                          "bench_convert": convert_row,
                                          "bench_dataset": dataset_row}
#: Sections rendered as one table from several result files, a row each.
SECTIONS: dict[str, tuple[str, ...]] = {
    "benchmarks": ("bench_model", "bench_pool", "bench_convert", "bench_dataset")}


def render(name: str) -> str:
    if name in SECTIONS:
        text = "| benchmark | figure | command |\n|---|---|---|\n"
        for part in SECTIONS[name]:
            path, payload = _load(part)
            if payload.get("kind") not in ROWS:
                raise ValueError(f"README section {name!r}: {path} has kind "
                                 f"{payload.get('kind')!r}; known: {', '.join(ROWS)}")
            text += ROWS[payload["kind"]](payload)
        return text
    path, payload = _load(name)
    kind = payload.get("kind", "comparison")
    if kind not in RENDERERS:
        raise ValueError(f"README section {name!r}: {path} has kind {kind!r}; known: "
                         f"{', '.join(RENDERERS)}")
    return RENDERERS[kind](payload)


def update(text: str) -> tuple[str, list[str]]:
    """The README with every generated section re-rendered, and the stale ones' names."""
    stale: list[str] = []

    def sub(match: re.Match) -> str:
        body = render(match["name"])
        if body != match["body"]:
            stale.append(match["name"])
        return match.group(1) + body + match.group(4)

    return SECTION.sub(sub, text), stale


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="do not write; exit 1 if stale")
    ap.add_argument("--readme", "--page", dest="pages", type=Path, action="append",
                    help="a page to render (repeatable); default: README.md and docs/*.md")
    args = ap.parse_args(argv)
    status = 0
    for page in args.pages or PAGES:
        text = page.read_text()
        new, stale = update(text)
        if args.check:
            if stale:
                print(f"{page}: stale generated section(s): {', '.join(stale)}; "
                      "run python experiments/readme_tables.py")
                status = 1
            continue
        if new != text:
            page.write_text(new)
        if stale:
            print(f"{page}: {len(stale)} section(s) rewritten: {', '.join(stale)}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
