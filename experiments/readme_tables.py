"""Write, or check, the README's generated tables from committed result files.

A table in README.md between ``<!-- generated: NAME -->`` and ``<!-- end generated -->``
is rendered from ``experiments/results/NAME.json`` (what an experiment wrote with
``--out``; several runs of it are listed under ``"runs"``), so its figures are the
measured ones and cannot drift by hand; a name in :data:`SECTIONS` renders one table from
several files (the speed table: a row per benchmark). ``tests/test_readme.py`` runs the
check. The cheap benchmarks write their files with :func:`write_result`.

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


#: How each result file is rendered (by its "kind"; default: the comparison table).
RENDERERS: dict[str, Callable[[dict], str]] = {"comparison": comparison, "ablation": ablation}
#: Table rows, one per result file, for the sections of :data:`SECTIONS`.
ROWS: dict[str, Callable[[dict], str]] = {"bench_model": model_row, "bench_pool": pool_row,
                                          "bench_convert": convert_row}
#: Sections rendered as one table from several result files, a row each.
SECTIONS: dict[str, tuple[str, ...]] = {
    "benchmarks": ("bench_model", "bench_pool", "bench_convert")}


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
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = ap.parse_args(argv)
    text = args.readme.read_text()
    new, stale = update(text)
    if args.check:
        if stale:
            print(f"{args.readme}: stale generated section(s): {', '.join(stale)}; "
                  "run python experiments/readme_tables.py")
            return 1
        return 0
    if new != text:
        args.readme.write_text(new)
    print(f"{args.readme}: {len(stale)} section(s) rewritten" + (f": {', '.join(stale)}" if stale
                                                                else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
