"""Seeded natural-language question tasks that need generalisation (issue 11).

Five tasks, each a stream of ``{"input": question, "target": answer}`` QA records
(the format :func:`~pyg_grapheme.data.read_pairs` reads). Every task has several
phrasings (templates), drawn at random per question, and every answer can be worked out
from the question alone:

* ``place_value``: the digit at a place (units ... hundred millions) of a 3-9 digit
  number, the place always inside the number: the place is drawn first (each about
  equally often), then a length that contains it, so long numbers are the commoner.
  ``Give the hundreds digit of 48213.`` -> ``2``.
* ``compare``: the bigger or smaller of two integers (1-6 digits, some negative), two
  decimals (1-3 decimals, mostly the same whole part) or two reduced fractions
  (denominators 2-20), one kind within a question. ``Which is bigger: 0.37 or 0.4?``
  -> ``0.4``. The answer is the number as written in the question; it is first or
  second with probability 1/2, and "bigger" and "smaller" are asked equally often.
* ``rounding``: an integer to the nearest ten ... million (a place inside the number),
  or a decimal to 0-3 decimal places. Rule: round half up (ties away from zero; every
  number is non-negative) on the exact decimal string with :mod:`decimal`, and keep
  exactly the asked number of decimals: ``Round 2.996 to 2 decimal places.`` ->
  ``3.00``, ``Round 48250 to the nearest hundred.`` -> ``48300``. About 10 % of the
  questions are exact ties.
* ``add_sub``: ``a + b`` or ``a - b`` of non-negative integers and decimals of up to 6
  digits (up to 3 after the point); about 3 questions in 4 carry or borrow. Exact
  :class:`~decimal.Decimal` answers, normalised: no exponent, no trailing zeros after
  the point, no point for whole results, ``0`` not ``-0`` (``8.75``, ``9``, ``-12.3``).
* ``sort``: 3-5 distinct integers or decimals (negatives included) in ascending or
  descending order; the answer lists them as written, joined by ``", "``.
* ``number_words``: a bare numeral 0-99999 and its English words, the answer longer than
  the question (issue 12): ``4021`` -> ``four thousand twenty-one`` (American usage: no
  "and", hyphenated tens).

Splits are disjoint by *problem*, not only by text: a problem (e.g. the number and the
place for ``place_value``, the unordered pair for ``compare``, the set of numbers for
``sort``) is generated at most once in the whole dataset, so the same problem in
another phrasing never leaks from train into val or test; question texts are distinct
too. Problems are drawn from ``random.Random(f"{task}-{seed}")`` and filled into test,
then val, then train, so changing the train size keeps val and test unchanged (and a
smaller train split is a prefix of a bigger one).

Command line (``--task`` in :mod:`pyg_grapheme.data.curriculum`)::

    python -m pyg_grapheme.data.curriculum --task place_value --seed 0 --out DIR
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Hashable, Sequence
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from math import gcd
from pathlib import Path

from pyg_grapheme.data.curriculum import SPLITS, _dumps, atomic_write_bytes

__all__ = [
    "DEFAULT_TASK_SIZES",
    "TASKS",
    "format_decimal",
    "generate_task",
    "number_words",
    "round_half_up",
    "write_task",
]

#: The task names, in the order of the module docstring.
TASKS = ("place_value", "compare", "rounding", "add_sub", "sort", "number_words")
#: Default (train, val, test) sizes of every task.
DEFAULT_TASK_SIZES = (20000, 1000, 1000)

# One generated problem: (key identifying the problem whatever its phrasing, question, answer).
Problem = tuple[Hashable, str, str]


def format_decimal(value: Decimal) -> str:
    """``value`` as plain text: no exponent, no trailing zeros after the point, no point
    for whole values, ``0`` for ``-0`` (``Decimal("8.750")`` -> ``"8.75"``,
    ``Decimal("1E+2")`` -> ``"100"``)."""
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def _digits(rng: random.Random, n: int, *, lead: bool = True) -> str:
    """``n`` random digits; the first is non-zero when ``lead`` and ``n > 1``."""
    if n <= 0:
        return ""
    first = str(rng.randint(1, 9) if lead and n > 1 else rng.randint(0, 9))
    return first + "".join(str(rng.randint(0, 9)) for _ in range(n - 1))


def _fraction_digits(rng: random.Random, places: int) -> str:
    """``places`` random digits whose last is non-zero (a normalised decimal part)."""
    return _digits(rng, places - 1, lead=False) + str(rng.randint(1, 9))


# ---------------------------------------------------------------- place_value

_PLACES = (
    "units", "tens", "hundreds", "thousands", "ten thousands", "hundred thousands",
    "millions", "ten millions", "hundred millions",
)
_PLACE_VALUE_TEMPLATES = (
    "What is the digit in the {place} place of {n}?",
    "In {n}, which digit is in the {place} place?",
    "Give the {place} digit of {n}.",
    "Which digit of {n} is in the {place} place?",
    "What is the {place} digit of the number {n}?",
)


def _place_value(rng: random.Random) -> Problem:
    # The place first (each of the nine equally often), then a length that contains it.
    place = rng.randrange(len(_PLACES))  # 0 = units
    length = rng.randint(max(3, place + 1), 9)
    n = _digits(rng, length)
    question = rng.choice(_PLACE_VALUE_TEMPLATES).format(n=n, place=_PLACES[place])
    return (n, place), question, n[length - 1 - place]


# ---------------------------------------------------------------- compare

_COMPARE_WORDS = {"bigger": ("bigger", "larger"), "smaller": ("smaller", "lower")}
_COMPARE_TEMPLATES = (
    "Which is {w}: {a} or {b}?",
    "What is the {w} value in {a}, {b}?",
    "Of {a} and {b}, which is {w}?",
    "Which number is {w}, {a} or {b}?",
    "Give the {w} of {a} and {b}.",
)


def _value(text: str) -> Decimal | Fraction:
    """The exact value of a number as written (Decimal for integers and decimals, which is
    much faster than Fraction; a question never mixes fractions with the others)."""
    return Fraction(text) if "/" in text else Decimal(text)


def _signed(rng: random.Random, text: str, p_negative: float) -> str:
    return "-" + text if rng.random() < p_negative and text.strip("0.") else text


def _compare_integers(rng: random.Random) -> tuple[str, str]:
    a = _digits(rng, rng.randint(1, 6))
    if rng.random() < 0.5 and len(a) > 1:  # a close one: same length, shared prefix
        keep = rng.randrange(1, len(a))
        b = a[:keep] + _digits(rng, len(a) - keep, lead=False)
    else:
        b = _digits(rng, rng.randint(1, 6))
    return _signed(rng, a, 0.15), _signed(rng, b, 0.15)


def _compare_decimal(rng: random.Random, whole: int) -> str:
    return f"{whole}.{_fraction_digits(rng, rng.randint(1, 3))}"


def _compare_decimals(rng: random.Random) -> tuple[str, str]:
    whole = rng.choice((0, rng.randint(0, 9), rng.randint(0, 99)))
    a = _compare_decimal(rng, whole)
    # Mostly the same whole part, so the decimals decide (0.37 or 0.4).
    b = _compare_decimal(rng, whole if rng.random() < 0.6 else rng.randint(0, 99))
    return _signed(rng, a, 0.1), _signed(rng, b, 0.1)


def _reduced_fraction(rng: random.Random) -> str:
    """A reduced fraction with denominator 2-20, proper (3/7) two times in three, else
    improper (17/9)."""
    while True:
        den = rng.randint(2, 20)
        num = rng.randint(1, den - 1) if rng.random() < 2 / 3 else rng.randint(den + 1, 2 * den - 1)
        if gcd(num, den) == 1:
            return f"{num}/{den}"


def _compare(rng: random.Random) -> Problem:
    kind = rng.choice((_compare_integers, _compare_decimals, "fraction"))
    while True:
        if isinstance(kind, str):  # "fraction"
            a, b = _reduced_fraction(rng), _reduced_fraction(rng)
        else:
            a, b = kind(rng)
        if _value(a) != _value(b):
            break
    which = rng.choice(("bigger", "smaller"))
    low, high = sorted((a, b), key=_value)
    answer = high if which == "bigger" else low
    other = low if which == "bigger" else high
    first, second = (answer, other) if rng.random() < 0.5 else (other, answer)
    word = rng.choice(_COMPARE_WORDS[which])
    question = rng.choice(_COMPARE_TEMPLATES).format(w=word, a=first, b=second)
    return frozenset((a, b)), question, answer


# ---------------------------------------------------------------- rounding

_TENS = ("ten", "hundred", "thousand", "ten thousand", "hundred thousand", "million")
_DECIMAL_TARGETS = (
    ("the nearest whole number",),
    ("1 decimal place", "the nearest tenth"),
    ("2 decimal places", "the nearest hundredth"),
    ("3 decimal places", "the nearest thousandth"),
)
_ROUNDING_TEMPLATES = (
    "Round {n} to {target}.",
    "What is {n} rounded to {target}?",
    "Give {n} rounded to {target}.",
    "If you round {n} to {target}, what do you get?",
    "Rounded to {target}, what is {n}?",
)


def round_half_up(number: str, exponent: int) -> str:
    """``number`` (a non-negative decimal string) rounded half up to a multiple of
    ``10**exponent`` (``exponent`` -2: two decimals), with exactly ``max(0, -exponent)``
    decimals: ``round_half_up("2.996", -2)`` -> ``"3.00"``, ``("48250", 2)`` -> ``"48300"``."""
    value = Decimal(number).quantize(Decimal(1).scaleb(exponent), rounding=ROUND_HALF_UP)
    return str(int(value)) if exponent >= 0 else str(value)


def _rounding(rng: random.Random) -> Problem:
    tie = rng.random() < 0.1
    if rng.random() < 0.5:  # an integer to the nearest 10**exponent, inside the number
        length = rng.randint(2, 7)
        exponent = rng.randint(1, length - 1)
        n = _digits(rng, length)
        if tie:
            n = n[: length - exponent] + "5" + "0" * (exponent - 1)
        target = f"the nearest {_TENS[exponent - 1]}"
    else:  # a decimal to 0-3 decimals, with more decimals than that
        whole = rng.choice((rng.randint(0, 9), rng.randint(10, 999), rng.randint(1000, 99999)))
        keep = rng.randint(0, 3)
        places = keep + 1 if tie else rng.randint(keep + 1, 5)
        fraction = _fraction_digits(rng, places)
        if tie:
            fraction = fraction[:-1] + "5"
        n = f"{whole}.{fraction}"
        exponent = -keep
        target = rng.choice(_DECIMAL_TARGETS[keep])
    question = rng.choice(_ROUNDING_TEMPLATES).format(n=n, target=target)
    return (n, exponent), question, round_half_up(n, exponent)


# ---------------------------------------------------------------- add_sub

_ADD_TEMPLATES = (
    "What is {a} + {b}?",
    "Calculate {a} + {b}.",
    "Add {a} and {b}.",
    "What is the sum of {a} and {b}?",
    "What is {a} plus {b}?",
)
_SUB_TEMPLATES = (
    "What is {a} - {b}?",
    "Calculate {a} - {b}.",
    "Subtract {b} from {a}.",
    "What is {a} minus {b}?",
    "What do you get if you subtract {b} from {a}?",
)


def _operand(rng: random.Random) -> str:
    """A non-negative integer of 1-6 digits (60 %) or a decimal of at most 6 digits with
    1-3 after the point, written normalised."""
    if rng.random() < 0.6:
        return _digits(rng, rng.randint(1, 6))
    places = rng.randint(1, 3)
    return f"{_digits(rng, rng.randint(1, 6 - places))}.{_fraction_digits(rng, places)}"


def _add_sub(rng: random.Random) -> Problem:
    a, b = _operand(rng), _operand(rng)
    if rng.random() < 0.5:
        question = rng.choice(_ADD_TEMPLATES).format(a=a, b=b)
        return ("+", *sorted((a, b))), question, format_decimal(Decimal(a) + Decimal(b))
    question = rng.choice(_SUB_TEMPLATES).format(a=a, b=b)
    return ("-", a, b), question, format_decimal(Decimal(a) - Decimal(b))


# ---------------------------------------------------------------- sort

_ORDERS = {
    "ascending": ("in ascending order", "in increasing order", "from smallest to largest"),
    "descending": ("in descending order", "in decreasing order", "from largest to smallest"),
}
_SORT_TEMPLATES = (
    "Sort {nums} {order}.",
    "Put {nums} {order}.",
    "Arrange the numbers {nums} {order}.",
    "Write {nums} {order}.",
    "Order these numbers {order}: {nums}.",
)


def _sort_number(rng: random.Random, decimals: bool) -> str:
    if decimals:
        text = f"{rng.randint(0, 99)}.{_fraction_digits(rng, rng.randint(1, 2))}"
        return _signed(rng, text, 0.2)
    return _signed(rng, _digits(rng, rng.randint(1, 3)), 0.25)


def _sort(rng: random.Random) -> Problem:
    count = rng.randint(3, 5)
    decimals = rng.random() < 0.3
    numbers: list[str] = []
    while len(numbers) < count:
        x = _sort_number(rng, decimals)
        if all(_value(x) != _value(y) for y in numbers):
            numbers.append(x)
    direction = rng.choice(("ascending", "descending"))
    ordered = sorted(numbers, key=_value, reverse=direction == "descending")
    question = rng.choice(_SORT_TEMPLATES).format(
        nums=", ".join(numbers), order=rng.choice(_ORDERS[direction])
    )
    return frozenset(numbers), question, ", ".join(ordered)


# ---------------------------------------------------------------- number_words

_WORD_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
         "fourteen fifteen sixteen seventeen eighteen nineteen").split()
_WORD_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(n: int) -> str:
    """English words of ``0 <= n < 10**6`` (``4021`` -> ``four thousand twenty-one``)."""
    if not 0 <= n < 10**6:
        raise ValueError(f"number_words takes 0 <= n < 1000000, got {n}")
    if n < 20:
        return _WORD_ONES[n]
    if n < 100:
        return _WORD_TENS[n // 10] + ("" if n % 10 == 0 else "-" + _WORD_ONES[n % 10])
    if n < 1000:
        rest = "" if n % 100 == 0 else " " + number_words(n % 100)
        return f"{_WORD_ONES[n // 100]} hundred{rest}"
    rest = "" if n % 1000 == 0 else " " + number_words(n % 1000)
    return f"{number_words(n // 1000)} thousand{rest}"


def _number_words(rng: random.Random) -> Problem:
    n = rng.randrange(100_000)
    return n, str(n), number_words(n)


# ---------------------------------------------------------------- generation

_GENERATORS: dict[str, Callable[[random.Random], Problem]] = {
    "place_value": _place_value,
    "compare": _compare,
    "rounding": _rounding,
    "add_sub": _add_sub,
    "sort": _sort,
    "number_words": _number_words,
}
assert tuple(_GENERATORS) == TASKS


def _check_task(name: str) -> Callable[[random.Random], Problem]:
    try:
        return _GENERATORS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown task {name!r}; known tasks: {', '.join(TASKS)} (the prefix-arithmetic "
            "levels math1 and math2 come from generate_curriculum(level))"
        ) from None


def generate_task(
    name: str, seed: int = 0, sizes: Sequence[int] | None = None
) -> dict[str, list[dict]]:
    """The ``{"train": [...], "val": [...], "test": [...]}`` QA records of one task.

    Args:
        name: one of :data:`TASKS`.
        seed: the same seed gives the same records (in the same order).
        sizes: ``(train, val, test)`` sizes; default :data:`DEFAULT_TASK_SIZES`.

    Raises:
        ValueError: an unknown task (the message lists the known ones), or bad sizes.
    """
    generate = _check_task(name)
    sizes = tuple(DEFAULT_TASK_SIZES if sizes is None else sizes)
    if len(sizes) != 3 or any(not isinstance(n, int) or n < 0 for n in sizes):
        raise ValueError(f"sizes must be three non-negative integers, got {sizes!r}")
    n_train, n_val, n_test = sizes
    total = n_train + n_val + n_test
    rng = random.Random(f"{name}-{seed}")
    keys: set = set()
    texts: set[str] = set()
    records: list[dict] = []
    attempts, limit = 0, 20 * total + 1000
    while len(records) < total:
        attempts += 1
        if attempts > limit:
            raise ValueError(
                f"task {name!r}: only {len(records)} distinct problems in {limit} draws; "
                f"sizes {sizes} ask for {total}"
            )
        key, question, answer = generate(rng)
        if key in keys or question in texts:
            continue
        keys.add(key)
        texts.add(question)
        records.append({"input": question, "target": answer})
    # Test first, then val, then train: the held-out splits do not depend on the train size.
    return {
        "train": records[n_test + n_val :],
        "val": records[n_test : n_test + n_val],
        "test": records[:n_test],
    }


def write_task(
    out: str | os.PathLike, name: str, seed: int = 0, sizes: Sequence[int] | None = None
) -> dict[str, Path]:
    """Write ``out/train.jsonl``, ``val.jsonl`` and ``test.jsonl`` of a task (each
    atomically, one compact JSON object a line); returns their paths."""
    splits = generate_task(name, seed, sizes)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split in SPLITS:
        paths[split] = out / f"{split}.jsonl"
        atomic_write_bytes(paths[split], _dumps(splits[split]))
    return paths
