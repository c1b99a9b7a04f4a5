"""Held-out variants of the kindergarten set, to check a training config is not tuned to
the one file: every question re-phrased by fixed rules (same answers), and a seeded
50-pair subset.

    python experiments/kindergarten_variants.py --out-dir runs/kg_variants
    # -> runs/kg_variants/kg_rephrased.jsonl (65 pairs), kg_subset50.jsonl (50 pairs)
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

from pyg_grapheme.data import kindergarten_path

#: (pattern, replacement), the first that matches re-phrases the question.
RULES: list[tuple[str, str]] = [
    (r"^What colour is (?:the |a |an )?(.+)\?$", r"Tell me the colour of \1."),
    (r"^What do (\w+) and (\w+) make\?$", r"Mix \1 with \2: which colour do you get?"),
    (r"^How many (\w+) does an? (\w+) have\?$", r"Count the \1 of a \2."),
    (r"^How many (\w+) (in|on) (.+)\?$", r"Count the \1 \2 \3."),
    (r"^What is (\d+) plus (\d+)\?$", r"Add \1 and \2."),
    (r"^What number comes after (\d+)\?$", r"Which number follows \1?"),
    (r"^What does an? (\w+) say\?$", r"Which sound does a \1 make?"),
    (r"^Which animal (.+)\?$", r"Name the animal that \1."),
    (r"^What is a baby (\w+) called\?$", r"Name a baby \1."),
    (r"^What is the opposite of (\w+)\?$", r"Give the opposite of \1."),
    (r"^What letter comes (after|before) (\w)\?$", r"Which letter is \1 \2?"),
    (r"^What is the (first|last) letter of the alphabet\?$",
     r"Name the \1 letter of the alphabet."),
    (r"^What letter does (\w+) start with\?$", r"Which letter starts the word \1?"),
    (r"^Show me (?:a |the )?(.+)\.$", r"Draw the \1."),
    (r"^What (.+)\?$", r"Tell me: what \1?"),
    (r"^Where (.+)\?$", r"Tell me: where \1?"),
]


def rephrase(question: str) -> str:
    for pattern, repl in RULES:
        new, n = re.subn(pattern, repl, question)
        if n:
            return new
    return f"Please answer: {question}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", default="runs/kg_variants")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in kindergarten_path().read_text().splitlines() if line]
    rephrased = [{**r, "input": rephrase(r["input"])} for r in rows]
    if len({r["input"] for r in rephrased}) != len(rows):
        raise SystemExit("two re-phrased questions coincide")
    subset = sorted(random.Random(args.seed).sample(rows, 50), key=lambda r: r["id"])
    for name, data in (("kg_rephrased.jsonl", rephrased), ("kg_subset50.jsonl", subset)):
        (out / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in data))
        print(f"{out / name}: {len(data)} pairs")


if __name__ == "__main__":
    main()
