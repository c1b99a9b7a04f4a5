import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyg_grapheme.data import detect_format, read_pairs
from pyg_grapheme.data.curriculum import (
    DEFAULT_SIZES,
    SPLITS,
    generate_curriculum,
    main,
    universe,
    write_curriculum,
)

PROTOTYPE_MATH = (
    Path(__file__).resolve().parents[3] / "shared" / "reference" / "prototype-data"
    / "math_level_1.jsonl"
)
REPO = Path(__file__).resolve().parents[2]


def _eval_polish(text: str) -> int:
    """An independent evaluator of the prefix expressions (tokenise + recursive descent)."""
    tokens = text.replace("(", " ( ").replace(")", " ) ").split()

    def parse(i):
        if tokens[i] != "(":
            return int(tokens[i]), i + 1
        op = tokens[i + 1]
        a, i = parse(i + 2)
        b, i = parse(i)
        assert tokens[i] == ")"
        return {"+": a + b, "-": a - b, "*": a * b}[op], i + 1

    value, end = parse(0)
    assert end == len(tokens)
    return value


@pytest.mark.parametrize("level", [1, 2])
def test_universe_sizes_are_distinct(level):
    problems = list(universe(level))
    assert len(problems) == {1: 3 * 20 * 20, 2: 2 * 9 * 10**3}[level]
    assert len(set(problems)) == len(problems)


@pytest.mark.parametrize("level", [1, 2])
def test_splits_disjoint_sizes_and_values(level):
    splits = generate_curriculum(level, seed=3)
    assert tuple(len(splits[s]) for s in SPLITS) == DEFAULT_SIZES[level]
    polish = [r["input_polish"] for s in SPLITS for r in splits[s]]
    ids = [r["id"] for s in SPLITS for r in splits[s]]
    assert len(set(polish)) == len(polish)  # no duplicate within or across splits
    assert len(set(ids)) == len(ids)
    for s in SPLITS:
        for r in splits[s]:
            assert r["expected_result"] == float(_eval_polish(r["input_polish"]))
            assert isinstance(r["expected_result"], float)
            assert r["level"] == level and r["expected_symbolic"] is None
            assert r["bindings"] == []


def test_level_1_uses_all_problems_and_shapes():
    splits = generate_curriculum(1, seed=0)
    polish = {r["input_polish"] for s in SPLITS for r in splits[s]}
    assert polish == {f"({op} {a} {b})" for op in "+-*" for a in range(1, 21)
                      for b in range(1, 21)}


def test_level_2_is_nested_with_three_operands_both_shapes():
    records = generate_curriculum(2, seed=0)["train"]
    left = right = 0
    for r in records:
        text = r["input_polish"]
        numbers = [t for t in text.replace("(", " ").replace(")", " ").split() if t.isdigit()]
        assert len(numbers) == 3 and all(1 <= int(n) <= 10 for n in numbers)
        assert text.count("(") == 2
        left += text.startswith("(", 3)
        right += text.endswith("))")
    assert left > 1000 and right > 1000 and left + right == len(records)


def test_records_match_prototype_schema():
    record = generate_curriculum(1, seed=0)["train"][0]
    if PROTOTYPE_MATH.exists():
        proto = json.loads(PROTOTYPE_MATH.read_text().splitlines()[0])
        assert list(record) == list(proto)
        assert set(record["input_expr"]["BinOp"]) == set(proto["input_expr"]["BinOp"])
    a, b = record["input_expr"]["BinOp"]["left"], record["input_expr"]["BinOp"]["right"]
    op = {"Add": "+", "Sub": "-", "Mul": "*"}[record["input_expr"]["BinOp"]["op"]]
    assert record["input_polish"] == f"({op} {a['Value']['Integer']} {b['Value']['Integer']})"


def test_seed_changes_the_split_and_same_seed_repeats():
    a, b, c = (generate_curriculum(1, seed=s) for s in (0, 0, 1))
    assert a == b
    assert [r["input_polish"] for r in a["test"]] != [r["input_polish"] for r in c["test"]]


def test_sizes_argument_and_limits():
    splits = generate_curriculum(2, seed=0, sizes=(5, 2, 1))
    assert [len(splits[s]) for s in SPLITS] == [5, 2, 1]
    with pytest.raises(ValueError, match="1200 distinct"):
        generate_curriculum(1, sizes=(1000, 200, 1))
    with pytest.raises(ValueError, match="known levels"):
        generate_curriculum(3)
    with pytest.raises(ValueError, match="three"):
        generate_curriculum(1, sizes=(1, 2))


def test_written_files_load_and_are_byte_identical_for_the_same_seed(tmp_path):
    paths_a = write_curriculum(tmp_path / "a", level=1, seed=0)
    main(["--level", "1", "--seed", "0", "--out", str(tmp_path / "b")])
    main(["--level", "1", "--seed", "1", "--out", str(tmp_path / "c")])
    for split in SPLITS:
        a = (tmp_path / "a" / f"{split}.jsonl").read_bytes()
        assert a == (tmp_path / "b" / f"{split}.jsonl").read_bytes()
        assert a != (tmp_path / "c" / f"{split}.jsonl").read_bytes()
        assert detect_format(paths_a[split]) == "math"
    pairs = read_pairs(paths_a["train"])
    assert len(pairs) == 960 and all("." not in t for _, t in pairs)
    assert not [p for p in os.listdir(tmp_path / "a") if p.endswith(".tmp")]


def test_command_line_in_a_fresh_process(tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "pyg_grapheme.data.curriculum", "--level", "2", "--seed", "0",
           "--out", str(out)]
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True)
    write_curriculum(tmp_path / "api", level=2, seed=0)
    for split in SPLITS:
        api = (tmp_path / "api" / f"{split}.jsonl").read_bytes()
        assert (out / f"{split}.jsonl").read_bytes() == api
    bad = subprocess.run([*cmd[:4], "3", "--out", str(out)], cwd=REPO, capture_output=True)
    assert bad.returncode == 2 and b"invalid choice" in bad.stderr


def test_failed_write_leaves_old_file_intact(tmp_path, monkeypatch):
    write_curriculum(tmp_path, level=1, seed=0)
    before = (tmp_path / "train.jsonl").read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_curriculum(tmp_path, level=1, seed=5)
    assert (tmp_path / "train.jsonl").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["test.jsonl", "train.jsonl", "val.jsonl"]
