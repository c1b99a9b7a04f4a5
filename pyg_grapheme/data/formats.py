"""The two JSON Lines formats of (input, target) text pairs, with file:line errors.

**QA** -- one object a line with string fields ``input`` and ``target``; other fields are
allowed and ignored (the prototype's kindergarten files carry ``id``, ``input_polish``,
``target_polish``)::

    {"input": "What colour is the sky?", "target": "blue"}

**Math curriculum** -- the prototype's generated problems::

    {"id": "L1-00001", "input_polish": "(+ 16 9)", "input_expr": {...},
     "expected_result": 25.0, "expected_symbolic": null, "level": 1, "bindings": []}

Required: ``id`` (string or integer), ``level`` (integer), ``input_polish`` (non-empty
string, the input text of the pair), and exactly one non-null of ``expected_result``
(finite number) and ``expected_symbolic`` (non-empty string). Optional: ``input_expr``
(object or null), ``bindings`` (list, object or null). The target text is the result
as text (:func:`result_text`): ``25`` for ``25`` or ``25.0``, ``-0.5`` for ``-0.5``.

Rules common to both: a file is UTF-8 (a leading BOM is accepted); lines are split on
``\\n`` only (``\\r\\n`` works; a raw U+2028 inside a JSON string does not split a line);
blank lines are skipped; the format is detected line by line and every record of a file
must have the same one. Any problem raises :class:`DataFormatError` naming
``file:line``; a file is read and validated completely before anything is returned, so
an error means no pairs at all.

Detection of one record: it is **QA** if it has ``input`` or ``target``; otherwise it is
**math** if it has ``input_polish``, ``expected_result`` or ``expected_symbolic``;
otherwise it matches neither. (QA wins because QA records may carry any extra fields.)
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "FORMATS",
    "DataFormatError",
    "detect_format",
    "parse_records",
    "read_pairs",
    "result_text",
]

FORMAT_QA = "qa"
FORMAT_MATH = "math"
#: The format names :func:`detect_format` returns.
FORMATS = (FORMAT_QA, FORMAT_MATH)

_MATH_KEYS = ("input_polish", "expected_result", "expected_symbolic")


class DataFormatError(ValueError):
    """A data file that cannot be loaded; the message starts with ``file:line:``.

    Attributes:
        path: the file (as given), ``line``: the 1-based line number (``None`` when the
        problem concerns the whole file, e.g. an empty file).
    """

    def __init__(self, path: str, line: int | None, message: str) -> None:
        self.path = path
        self.line = line
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {message}")


def result_text(value: int | float) -> str:
    """The text of a numeric result: integral values without a decimal point.

    ``25`` and ``25.0`` give ``"25"``, ``-0.0`` gives ``"0"``, ``1e20`` gives
    ``"100000000000000000000"``. Non-integral floats use Python's ``repr``, the shortest
    string that reads back to the same float (``0.1`` -> ``"0.1"``, ``1/3`` ->
    ``"0.3333333333333333"``, ``1e-07`` -> ``"1e-07"``).
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"result must be finite, got {value!r}")
        if value.is_integer():
            return str(int(value))
        return repr(value)
    return str(value)


def _classify(record: Any) -> str | None:
    if not isinstance(record, dict):
        return None
    if "input" in record or "target" in record:
        return FORMAT_QA
    if any(k in record for k in _MATH_KEYS):
        return FORMAT_MATH
    return None


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _qa_pair(record: dict, fail: Callable[[str], DataFormatError]) -> tuple[str, str]:
    for key in ("input", "target"):
        if key not in record:
            raise fail(f"QA record is missing the field {key!r}")
        if not isinstance(record[key], str):
            raise fail(f"field {key!r} must be a string, got {_type_name(record[key])}")
    if not record["input"].strip():
        raise fail("empty input: field 'input' is empty or only whitespace")
    return record["input"], record["target"]


def _math_pair(record: dict, fail: Callable[[str], DataFormatError]) -> tuple[str, str]:
    for key in ("id", "level", "input_polish"):
        if key not in record:
            raise fail(f"math record is missing the field {key!r}")
    if not (isinstance(record["id"], str) or _is_int(record["id"])):
        raise fail(f"field 'id' must be a string or integer, got {_type_name(record['id'])}")
    if not _is_int(record["level"]):
        raise fail(f"field 'level' must be an integer, got {_type_name(record['level'])}")
    polish = record["input_polish"]
    if not isinstance(polish, str):
        raise fail(f"field 'input_polish' must be a string, got {_type_name(polish)}")
    if not polish.strip():
        raise fail("empty input: field 'input_polish' is empty or only whitespace")
    result = record.get("expected_result")
    symbolic = record.get("expected_symbolic")
    if (result is None) == (symbolic is None):
        state = "both are null or missing" if result is None else "both are set"
        raise fail(
            f"exactly one of 'expected_result' and 'expected_symbolic' must be non-null; {state}"
        )
    if result is not None:
        if isinstance(result, bool) or not isinstance(result, int | float):
            raise fail(f"field 'expected_result' must be a number, got {_type_name(result)}")
        if isinstance(result, float) and not math.isfinite(result):
            raise fail(f"field 'expected_result' must be a finite number, got {result!r}")
        target = result_text(result)
    else:
        if not isinstance(symbolic, str):
            raise fail(f"field 'expected_symbolic' must be a string, got {_type_name(symbolic)}")
        if not symbolic.strip():
            raise fail("field 'expected_symbolic' is empty")
        target = symbolic
    expr = record.get("input_expr")
    if expr is not None and not isinstance(expr, dict):
        raise fail(f"field 'input_expr' must be an object or null, got {_type_name(expr)}")
    bindings = record.get("bindings")
    if bindings is not None and not isinstance(bindings, list | dict):
        raise fail(f"field 'bindings' must be a list, object or null, got {_type_name(bindings)}")
    return polish, target


def _check_utf8_text(text: str, fail: Callable[[str], DataFormatError]) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise fail(
            f"a string contains the lone surrogate {text[err.start]!r} (from a \\u escape); "
            "it has no UTF-8 encoding"
        ) from None


def _records(data: bytes, name: str) -> Iterator[tuple[int, dict, str]]:
    """``(line number, record, format)`` of every non-blank line, one at a time (a file's
    records never all exist at once); checks detection only."""
    start = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    first: tuple[int, str] | None = None
    for lineno, raw in enumerate(_lines(data, start), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            message = f"not valid UTF-8 ({err.reason} at byte {err.start})"
            raise DataFormatError(name, lineno, message) from None
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            message = f"invalid JSON: {err.msg} (column {err.colno})"
            raise DataFormatError(name, lineno, message) from None
        fmt = _classify(record)
        if fmt is None:
            if isinstance(record, dict):
                what = f"an object with fields {sorted(record)}"
            else:
                what = f"a JSON {_type_name(record)}"
            raise DataFormatError(
                name,
                lineno,
                f"matches neither format: expected a QA object with 'input' and 'target' or a "
                f"math record with 'input_polish' and 'expected_result'/'expected_symbolic', "
                f"got {what}",
            )
        if first is None:
            first = (lineno, fmt)
        elif fmt != first[1]:
            raise DataFormatError(
                name,
                lineno,
                f"mixed formats: this record is {fmt!r} but line {first[0]} is {first[1]!r}",
            )
        yield lineno, record, fmt
    if first is None:
        raise DataFormatError(name, None, "empty file: no records (only blank lines or nothing)")


def _lines(data: bytes, start: int) -> Iterator[bytes]:
    """``data[start:].split(b"\\n")`` without the list (or the copy) of every line."""
    view = memoryview(data)
    while True:
        end = data.find(b"\n", start)
        if end < 0:
            yield bytes(view[start:])
            return
        yield bytes(view[start:end])
        start = end + 1


def parse_records(data: bytes | str, name: str = "<string>") -> tuple[str, list[tuple[str, str]]]:
    """Parse a whole JSON Lines document; returns ``(format, pairs)``.

    ``name`` is used in error messages in place of a file name. See the module docstring
    for the formats and the rules.
    """
    formats, pairs = set(), []
    for fmt, pair in iter_pairs(data, name):
        formats.add(fmt)
        pairs.append(pair)
    return formats.pop(), pairs  # one format: iter_pairs raises on mixed or no records


def iter_pairs(data: bytes | str, name: str = "<string>"
               ) -> Iterator[tuple[str, tuple[str, str]]]:
    """:func:`parse_records` one record at a time: ``(format, (input, target))`` per
    record, the same checks and errors, raised when the reader reaches the bad line."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    for lineno, record, fmt in _records(data, name):

        def fail(message: str, lineno: int = lineno) -> DataFormatError:
            return DataFormatError(name, lineno, message)

        pair = _qa_pair(record, fail) if fmt == FORMAT_QA else _math_pair(record, fail)
        for text in pair:
            _check_utf8_text(text, fail)
        yield fmt, pair


def read_pairs(path: str | os.PathLike) -> list[tuple[str, str]]:
    """The ``(input, target)`` text pairs of a QA or math-curriculum JSON Lines file.

    Raises:
        DataFormatError: with ``file:line`` in the message, for invalid UTF-8 or JSON, a
            missing or wrongly typed field, an empty input, a record that matches neither
            format, mixed formats, or a file without records. Nothing is returned then.
    """
    return parse_records(Path(path).read_bytes(), str(path))[1]


def detect_format(path: str | os.PathLike) -> str:
    """``"qa"`` or ``"math"``: the format of every record of the file.

    Only detection is checked (valid JSON objects, one format throughout, at least one
    record); field values are validated by :func:`read_pairs`.

    Raises:
        DataFormatError: invalid JSON, a record of neither format, mixed formats, an
            empty file.
    """
    formats = {fmt for _, _, fmt in _records(Path(path).read_bytes(), str(path))}
    return formats.pop()  # exactly one: _records raises on mixed formats or none
