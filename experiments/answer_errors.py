"""Issue 11: where the graph model's wrong answers are wrong (math2 and other numeric tasks).

Trains the graph model exactly as ``baseline_seq2seq.py`` does (its ``train_graph``: the
shared harness, CPU-second budget, best-validation checkpoint) and sorts the test
answers: exact match by operator pair (math2's prefix expressions), by answer length, and
for the wrong answers of the right length which character is wrong, counted from the
right (0 = the units digit), and how far the number is off. This is what showed that
the left-aligned canvas got the tens right and the units wrong (docs/model.md, "The
right-aligned canvas"; the right-aligned canvas, then an option, the forward copy, is
the default since session 18 with the copy anchored at the question's end)::

    python experiments/answer_errors.py --task math2 --seed 0 \\
        --graph-kwargs model.canvas_align=left
    python experiments/answer_errors.py --task math2 --seed 0
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import baseline_seq2seq as harness  # noqa: E402


def breakdown(rows: list[tuple[str, str, str]]) -> dict:
    """Exact match by operator pair and answer length; the wrong answers' wrong places."""
    def share(groups: dict) -> dict:
        return {k: [sum(g), len(g)] for k, g in sorted(groups.items())}

    by_ops, by_len = collections.defaultdict(list), collections.defaultdict(list)
    place, off = collections.Counter(), collections.Counter()
    length_wrong = 0
    for q, p, t in rows:
        ok = p == t
        by_ops["".join(re.findall(r"\(([-+*])", q)) or "-"].append(ok)
        by_len[len(t)].append(ok)
        if ok:
            continue
        if len(p) != len(t):
            length_wrong += 1
            continue
        for i, (a, b) in enumerate(zip(p[::-1], t[::-1], strict=True)):
            place[i] += a != b
        try:
            off[min(abs(int(p) - int(t)), 100)] += 1
        except ValueError:
            off["not a number"] += 1
    return {"exact": sum(p == t for _, p, t in rows) / max(len(rows), 1),
            "by_operators": share(by_ops), "by_length": share(by_len),
            "wrong": sum(p != t for _, p, t in rows), "length_wrong": length_wrong,
            "wrong_place_from_right": dict(sorted(place.items())),
            "off_by": dict(off.most_common(12))}


def print_breakdown(name: str, b: dict) -> None:
    print(f"\n{name}: exact match {b['exact']:.3f}; {b['wrong']} wrong, "
          f"{b['length_wrong']} of them of the wrong length")
    for key in ("by_operators", "by_length"):
        print(f"| {key.replace('_', ' ')} | " + " | ".join(map(str, b[key])) + " |")
        print("|---|" + "---|" * len(b[key]))
        print("| exact match (n) | " + " | ".join(
            f"{ok / n:.2f} ({n})" for ok, n in b[key].values()) + " |")
    print("wrong character of same-length wrong answers, counted from the right:",
          b["wrong_place_from_right"])
    print("|answer - target| of those (most common first):", b["off_by"])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="math2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget-s", type=float, default=480.0)
    p.add_argument("--graph-kwargs", default="")
    p.add_argument("--data-dir", type=Path, default=Path("data_cache/baseline"))
    p.add_argument("--out", type=Path, help="write the breakdowns and answers as JSON")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    data = harness.load_task(args.task, args.data_dir, args.seed)
    answers: dict[str, list] = {}
    evaluate_all = harness.evaluate_all

    def keep_answers(answer, data, result):
        # record the harness's own answers (one call per split, in data.pairs' order)
        # instead of generating them a second time
        calls: list[list[str]] = []

        def recording(questions: list[str]) -> list[str]:
            calls.append(answer(questions))
            return calls[-1]

        result = evaluate_all(recording, data, result)
        for (split, pairs), outs in zip(data.pairs.items(), calls, strict=True):
            if split in ("train", "test"):
                answers[split] = [(q, a, t) for (q, t), a in zip(pairs, outs, strict=True)
                                  ][:1000]
        return result

    harness.evaluate_all = keep_answers
    harness.train_graph(data, budget_s=args.budget_s, seed=args.seed,
                        module_kwargs=harness.parse_kwargs(args.graph_kwargs))
    report = {split: breakdown(rows) for split, rows in answers.items()}
    for split in ("train", "test"):
        print_breakdown(f"{args.task} {split} (first 1000)", report[split])
    if args.out:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                        "report": report, "answers": answers}, indent=1))


if __name__ == "__main__":
    main()
