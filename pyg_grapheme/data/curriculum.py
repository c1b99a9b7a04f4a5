"""Seeded generator of the math curriculum (prefix arithmetic, the prototype's format).

The command line also writes the natural-language question tasks of
:mod:`pyg_grapheme.data.tasks` (``--task place_value`` etc.).

* Level 1: ``(op a b)`` with ``a, b`` in 1..20 and ``op`` in ``+ - *``: all
  3 * 20 * 20 = 1200 distinct problems, split 960 / 120 / 120 by default.
* Level 2: nested, three operands in 1..10, both shapes ``(op1 (op2 a b) c)`` and
  ``(op1 a (op2 b c))``, e.g. ``(+ (* 3 4) 5)`` or ``(- 7 (+ 2 9))``: 2 * 9 * 1000 =
  18000 distinct problems, of which 4000 / 500 / 500 are drawn by default (the split
  of the reference anchors).

The universe of a level is enumerated in a fixed order, shuffled with
``random.Random(seed)`` and cut into train, val and test, so no problem appears twice
in one split or in two splits. Records have the fields of the prototype's
``data/generated/level_1.jsonl`` in its order (``expected_result`` a float, ``25.0``);
ids (``L1-00001``, ...) are numbered across the three splits, so they are unique too.

Command line (same seed, same files, byte for byte; each file written atomically)::

    python -m pyg_grapheme.data.curriculum --level 1 --seed 0 --out DIR
    python -m pyg_grapheme.data.curriculum --task place_value --seed 0 --out DIR
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

from pyg_grapheme._io import atomic_write_bytes

__all__ = [
    "DEFAULT_SIZES",
    "LEVELS",
    "SPLITS",
    "generate_curriculum",
    "universe",
    "write_curriculum",
]

SPLITS = ("train", "val", "test")
LEVELS = (1, 2)
#: Default (train, val, test) sizes per level.
DEFAULT_SIZES: dict[int, tuple[int, int, int]] = {1: (960, 120, 120), 2: (4000, 500, 500)}

_OPS = {"+": "Add", "-": "Sub", "*": "Mul"}
_APPLY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
_LEVEL_1_OPERANDS = range(1, 21)
_LEVEL_2_OPERANDS = range(1, 11)

# An expression is an int (a leaf) or a tuple (op, left, right).
Expr = int | tuple


def _polish(e: Expr) -> str:
    return str(e) if isinstance(e, int) else f"({e[0]} {_polish(e[1])} {_polish(e[2])})"


def _expr_json(e: Expr) -> dict:
    if isinstance(e, int):
        return {"Value": {"Integer": e}}
    return {"BinOp": {"op": _OPS[e[0]], "left": _expr_json(e[1]), "right": _expr_json(e[2])}}


def _evaluate(e: Expr) -> int:
    return e if isinstance(e, int) else _APPLY[e[0]](_evaluate(e[1]), _evaluate(e[2]))


def universe(level: int) -> Iterator[Expr]:
    """Every distinct problem of ``level``, in a fixed (unshuffled) order."""
    if level == 1:
        for op, a, b in itertools.product(_OPS, _LEVEL_1_OPERANDS, _LEVEL_1_OPERANDS):
            yield (op, a, b)
    elif level == 2:
        ns = _LEVEL_2_OPERANDS
        for op1, op2, a, b, c in itertools.product(_OPS, _OPS, ns, ns, ns):
            yield (op1, (op2, a, b), c)
            yield (op1, a, (op2, b, c))
    else:
        raise ValueError(f"unknown curriculum level {level!r}; known levels: {list(LEVELS)}")


def _record(level: int, number: int, e: Expr) -> dict:
    return {
        "id": f"L{level}-{number:05d}",
        "input_polish": _polish(e),
        "input_expr": _expr_json(e),
        "expected_result": float(_evaluate(e)),
        "expected_symbolic": None,
        "level": level,
        "bindings": [],
    }


def generate_curriculum(
    level: int, seed: int = 0, sizes: Sequence[int] | None = None
) -> dict[str, list[dict]]:
    """The ``{"train": [...], "val": [...], "test": [...]}`` records of one level.

    Args:
        level: 1 or 2 (see the module docstring).
        seed: seed of the shuffle; the same seed gives the same records.
        sizes: ``(train, val, test)`` sizes; default :data:`DEFAULT_SIZES` of the level.
            Their sum may not exceed the number of distinct problems of the level.
    """
    problems = list(universe(level))
    sizes = tuple(DEFAULT_SIZES[level] if sizes is None else sizes)
    if len(sizes) != 3 or any(not isinstance(n, int) or n < 0 for n in sizes):
        raise ValueError(f"sizes must be three non-negative integers, got {sizes!r}")
    if sum(sizes) > len(problems):
        raise ValueError(
            f"level {level} has {len(problems)} distinct problems; sizes {sizes} ask for "
            f"{sum(sizes)}"
        )
    random.Random(seed).shuffle(problems)
    out, start = {}, 0
    for split, n in zip(SPLITS, sizes, strict=True):
        chosen = problems[start : start + n]
        out[split] = [_record(level, start + i + 1, e) for i, e in enumerate(chosen)]
        start += n
    return out


def _dumps(records: list[dict]) -> bytes:
    # Compact separators and key order as in the prototype's files; one record a line.
    lines = (json.dumps(r, separators=(",", ":"), ensure_ascii=False) + "\n" for r in records)
    return "".join(lines).encode("utf-8")


def write_curriculum(
    out: str | os.PathLike, level: int, seed: int = 0, sizes: Sequence[int] | None = None
) -> dict[str, Path]:
    """Write ``out/train.jsonl``, ``val.jsonl`` and ``test.jsonl``; returns their paths."""
    return write_splits(out, generate_curriculum(level, seed, sizes))


def write_splits(out: str | os.PathLike, splits: dict[str, list]) -> dict[str, Path]:
    """Write each split's records to ``out/{split}.jsonl`` (atomically); their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, records in splits.items():
        paths[split] = out / f"{split}.jsonl"
        atomic_write_bytes(paths[split], _dumps(records))
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    # Imported here: the tasks module imports this one (the writer and the split names).
    from pyg_grapheme.data.tasks import DEFAULT_TASK_SIZES, TASKS, write_task

    parser = argparse.ArgumentParser(
        prog="python -m pyg_grapheme.data.curriculum",
        description="Write a seeded math curriculum level or question task as "
        "train/val/test JSON Lines files.",
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--level", type=int, choices=LEVELS, help="prefix-arithmetic level")
    which.add_argument(
        "--task", choices=(*TASKS, "math1", "math2"),
        help="question task (QA records); math1/math2 are the same as --level 1/2",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--sizes", type=int, nargs=3, metavar=("TRAIN", "VAL", "TEST"), default=None,
        help="split sizes (default: 960 120 120 for level 1, 4000 500 500 for level 2, "
        f"{' '.join(map(str, DEFAULT_TASK_SIZES))} for a question task)",
    )
    args = parser.parse_args(argv)
    if args.task in ("math1", "math2"):
        args.level, args.task = int(args.task[-1]), None
    try:
        if args.task is not None:
            paths = write_task(args.out, args.task, args.seed, args.sizes)
        else:
            paths = write_curriculum(args.out, args.level, args.seed, args.sizes)
    except ValueError as err:
        parser.error(str(err))
    for split, path in paths.items():
        print(f"{split}: {path}")


if __name__ == "__main__":
    main()
