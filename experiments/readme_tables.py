"""Write, or check, the README's generated tables from committed result files.

A table in README.md between ``<!-- generated: NAME -->`` and ``<!-- end generated -->``
is rendered from ``experiments/results/NAME.json`` (what an experiment wrote with
``--out``; several runs of it are listed under ``"runs"``), so its figures are the
measured ones and cannot drift by hand. ``tests/test_readme.py`` runs the check.

    python experiments/readme_tables.py            # rewrite the generated sections
    python experiments/readme_tables.py --check    # exit 1 naming a stale section
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
from collections.abc import Callable
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


#: How each result file is rendered (by its "kind"; default: the comparison table).
RENDERERS: dict[str, Callable[[dict], str]] = {"comparison": comparison, "ablation": ablation}


def render(name: str) -> str:
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"README section {name!r}: no result file {path}")
    payload = json.loads(path.read_text())
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
