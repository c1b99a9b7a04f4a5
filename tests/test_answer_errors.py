"""experiments/answer_errors.py: the breakdown of wrong answers."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

from answer_errors import breakdown  # noqa: E402


def test_breakdown_counts_places_lengths_and_operators():
    rows = [
        ("(* 9 (- 9 10))", "-7", "-9"),   # units wrong, off by 2
        ("(* (* 9 5) 5)", "145", "225"),  # hundreds and tens wrong, off by 80
        ("(+ (+ 3 4) 3)", "1", "10"),     # the wrong length
        ("(+ (+ 1 1) 1)", "3", "3"),
        ("(* (+ 4 7) 3)", "3a", "33"),    # not a number
    ]
    b = breakdown(rows)
    assert b["exact"] == 1 / 5
    assert b["wrong"] == 4 and b["length_wrong"] == 1
    assert b["wrong_place_from_right"] == {0: 2, 1: 1, 2: 1}
    assert b["off_by"] == {2: 1, 80: 1, "not a number": 1}
    assert b["by_operators"] == {"*+": [0, 1], "*-": [0, 1], "**": [0, 1], "++": [1, 2]}
    assert b["by_length"] == {1: [1, 1], 2: [0, 3], 3: [0, 1]}
