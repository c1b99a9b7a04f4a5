import json
import re
from pathlib import Path

import pytest

from pyg_grapheme.data import DataFormatError, detect_format, read_pairs
from pyg_grapheme.data.formats import parse_records, result_text

PROTOTYPE = Path(__file__).resolve().parents[3] / "shared" / "reference" / "prototype-data"
needs_prototype = pytest.mark.skipif(
    not PROTOTYPE.is_dir(), reason=f"prototype data files not found at {PROTOTYPE}"
)

MATH = {
    "id": "L1-00001",
    "input_polish": "(+ 16 9)",
    "input_expr": {"BinOp": {"op": "Add", "left": {"Value": {"Integer": 16}},
                             "right": {"Value": {"Integer": 9}}}},
    "expected_result": 25.0,
    "expected_symbolic": None,
    "level": 1,
    "bindings": [],
}
QA = {"input": "What colour is the sky?", "target": "blue"}


def write(tmp_path: Path, *lines: str | dict, name: str = "data.jsonl") -> Path:
    path = tmp_path / name
    text = "".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines)
    path.write_text(text, encoding="utf-8")
    return path


def math(**changes) -> dict:
    record = dict(MATH)
    for key, value in changes.items():
        if value is KeyError:
            del record[key]
        else:
            record[key] = value
    return record


# ---------------------------------------------------------------- the prototype's files


@needs_prototype
def test_prototype_simple_qa_loads_unchanged():
    path = PROTOTYPE / "simple_qa.jsonl"
    assert detect_format(path) == "qa"
    pairs = read_pairs(path)
    assert len(pairs) == 10
    assert pairs[0] == ("How many legs cat have?", "Cat have 4 legs")
    assert pairs[-1] == ("How many ears cat have?", "Cat have 2 ears")


@needs_prototype
def test_prototype_kindergarten_with_empty_polish_fields_is_qa():
    path = PROTOTYPE / "kindergarten_level_1.jsonl"
    # Its records carry input_polish "" and target_polish "": still QA, extra fields ignored.
    assert detect_format(path) == "qa"
    assert read_pairs(path) == read_pairs(PROTOTYPE / "simple_qa.jsonl")


@needs_prototype
def test_prototype_math_level_1_loads_with_integer_targets():
    path = PROTOTYPE / "math_level_1.jsonl"
    assert detect_format(path) == "math"
    pairs = read_pairs(path)
    assert len(pairs) == 100
    assert pairs[0] == ("(+ 16 9)", "25")
    assert pairs[1] == ("(* 11 20)", "220")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for (src, tgt), rec in zip(pairs, records, strict=True):
        assert src == rec["input_polish"]
        assert tgt == str(int(rec["expected_result"]))
        assert "." not in tgt
    assert "-17" in {t for _, t in pairs}  # negative results keep their sign


# ---------------------------------------------------------------- valid variations


def test_qa_extra_fields_blank_lines_crlf_and_bom(tmp_path):
    path = tmp_path / "qa.jsonl"
    body = "\r\n".join([json.dumps({**QA, "id": 3, "notes": [1]}), "", "   ",
                        json.dumps({"input": "caf\u00e9?", "target": "\U0001F431"})])
    path.write_bytes(b"\xef\xbb\xbf" + body.encode() + b"\r\n\r\n")
    assert detect_format(path) == "qa"
    assert read_pairs(path) == [(QA["input"], "blue"), ("caf\u00e9?", "\U0001F431")]


def test_raw_line_separator_inside_a_string_does_not_split_the_line(tmp_path):
    # JSON allows a raw U+2028 in a string; str.splitlines() would split there.
    record = json.dumps({"input": "a\u2028b", "target": "c\x85d"}, ensure_ascii=False)
    path = write(tmp_path, record, "{not json")
    with pytest.raises(DataFormatError, match=re.escape(f"{path}:2:")):
        read_pairs(path)
    path = write(tmp_path, record)
    assert read_pairs(path) == [("a\u2028b", "c\x85d")]


def test_math_symbolic_result_and_optional_fields(tmp_path):
    rec = math(expected_result=None, expected_symbolic="x + 1", input_expr=KeyError,
               bindings=KeyError)
    rec2 = math(expected_result=KeyError, expected_symbolic="2*y", bindings={"y": 1})
    path = write(tmp_path, rec, rec2, math(expected_result=-3, id=7))
    assert read_pairs(path) == [("(+ 16 9)", "x + 1"), ("(+ 16 9)", "2*y"), ("(+ 16 9)", "-3")]


@pytest.mark.parametrize(
    ("value", "text"),
    [(25.0, "25"), (25, "25"), (-17.0, "-17"), (-0.0, "0"), (0.5, "0.5"), (-2.25, "-2.25"),
     (1 / 3, "0.3333333333333333"), (1e20, "100000000000000000000"), (1e-7, "1e-07")],
)
def test_result_text(value, text):
    assert result_text(value) == text
    assert float(text) == value


def test_non_integral_result_reads_back(tmp_path):
    path = write(tmp_path, math(expected_result=7 / 2))
    assert read_pairs(path) == [("(+ 16 9)", "3.5")]


# ---------------------------------------------------------------- errors, with file:line

ERROR_CASES = {
    "invalid JSON": ([QA, "", '{"input": "a", "target": '], 3, "invalid JSON"),
    "trailing garbage": ([QA, '{"input": "a", "target": "b"} x'], 2, "invalid JSON"),
    "QA missing target": ([QA, QA, {"input": "no target"}], 3, "missing the field 'target'"),
    "QA missing input": ([{"target": "t"}], 1, "missing the field 'input'"),
    "QA target not a string": ([QA, {"input": "a", "target": 4}], 2,
                               "'target' must be a string, got int"),
    "QA input null": ([{"input": None, "target": "x"}], 1, "'input' must be a string, got null"),
    "QA empty input": ([QA, "", "", {"input": "", "target": "x"}], 4, "empty input"),
    "QA whitespace input": ([{"input": " \t", "target": "x"}], 1, "empty input"),
    "math missing id": ([MATH, math(id=KeyError)], 2, "missing the field 'id'"),
    "math missing level": ([math(level=KeyError)], 1, "missing the field 'level'"),
    "math level is a string": ([math(level="1")], 1, "'level' must be an integer, got str"),
    "math level is a bool": ([math(level=True)], 1, "'level' must be an integer, got bool"),
    "math polish not a string": ([math(input_polish=["+", 1, 2])], 1,
                                 "'input_polish' must be a string, got list"),
    "math empty input": ([MATH, math(input_polish="")], 2, "empty input"),
    "math result is a string": ([math(expected_result="25")], 1,
                                "'expected_result' must be a number, got str"),
    "math result is a bool": ([math(expected_result=False)], 1,
                              "'expected_result' must be a number, got bool"),
    "math result NaN": (['{"id":"a","level":1,"input_polish":"(+ 1 2)","expected_result":NaN}'],
                        1, "finite"),
    "math both results": ([math(expected_symbolic="25")], 1, "exactly one"),
    "math no result": ([math(expected_result=None)], 1, "exactly one"),
    "math symbolic not a string": ([math(expected_result=None, expected_symbolic=3)], 1,
                                   "'expected_symbolic' must be a string"),
    "math input_expr wrong type": ([math(input_expr="(+ 16 9)")], 1, "'input_expr'"),
    "math bindings wrong type": ([math(bindings="x=1")], 1, "'bindings'"),
    "neither format": ([QA, {"question": "a", "answer": "b"}], 2, "matches neither format"),
    "not an object": (["[1, 2]"], 1, "matches neither format"),
    "mixed formats": ([QA, "", QA, MATH], 4, "mixed formats"),
    "mixed formats, math first": ([MATH, QA], 2, "line 1 is 'math'"),
    "lone surrogate": (['{"input": "a\\ud800", "target": "b"}'], 1, "lone surrogate"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_errors_name_file_and_line(tmp_path, case):
    lines, lineno, message = ERROR_CASES[case]
    path = write(tmp_path, *lines)
    with pytest.raises(DataFormatError) as info:
        read_pairs(path)
    assert str(info.value).startswith(f"{path}:{lineno}: ")
    assert message in str(info.value)
    assert info.value.line == lineno and info.value.path == str(path)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("content", [b"", b"\n\n  \r\n", b"\xef\xbb\xbf"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    for load in (read_pairs, detect_format):
        with pytest.raises(DataFormatError, match=re.escape(f"{path}: empty file")):
            load(path)


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(QA).encode() + b'\n{"input": "caf\xe9", "target": "x"}\n')
    with pytest.raises(DataFormatError, match=re.escape(f"{path}:2: not valid UTF-8")):
        read_pairs(path)


def test_detect_format_checks_detection_not_fields(tmp_path):
    path = write(tmp_path, {"input": "", "target": 5})
    assert detect_format(path) == "qa"  # field values are read_pairs' business
    with pytest.raises(DataFormatError, match=":1:"):
        read_pairs(path)
    path = write(tmp_path, MATH, QA)
    with pytest.raises(DataFormatError, match=re.escape(f"{path}:2: mixed formats")):
        detect_format(path)


def test_nothing_half_loaded_error_on_last_line(tmp_path):
    # 500 good records then one bad one: no pairs come back, only the error.
    path = write(tmp_path, *([QA] * 500), {"input": "x"})
    result = None
    with pytest.raises(DataFormatError, match=":501:"):
        result = read_pairs(path)
    assert result is None


def test_parse_records_from_memory():
    fmt, pairs = parse_records('{"input": "a", "target": "b"}\n', name="mem")
    assert fmt == "qa" and pairs == [("a", "b")]
    with pytest.raises(DataFormatError, match="^mem:1: "):
        parse_records("{}", name="mem")
