"""The README's generated tables are what the committed result files render to
(experiments/readme_tables.py), so a figure cannot be edited by hand or go stale."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
#: Every table the README must generate from experiments/results/NAME.json.
GENERATED = ("baseline_480s", "objective_ablation")


def _tables():
    path = ROOT / "experiments" / "readme_tables.py"
    spec = importlib.util.spec_from_file_location("readme_tables", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("readme_tables", module)
    spec.loader.exec_module(module)
    return module


def test_readme_generated_sections_are_current():
    tables = _tables()
    text = README
    names = [m["name"] for m in tables.SECTION.finditer(text)]
    assert set(GENERATED) <= set(names), names  # the comparison and the ablation tables
    new, stale = tables.update(text)
    assert not stale, f"stale: {stale}; run python experiments/readme_tables.py"
    assert new == text


@pytest.mark.parametrize("name", GENERATED)
def test_a_hand_edited_figure_is_caught(tmp_path, name):
    tables = _tables()
    text = README
    match = next(m for m in tables.SECTION.finditer(text) if m["name"] == name)
    body = match["body"]
    # The first figure of the table's first data row (the first cell that is a number).
    row = body.index("\n", body.index("|---")) + 1
    figure = re.compile(r"\| \**(\d)").search(body, row)
    assert figure is not None and figure.start() < body.index("\n", row), body[row:]
    edited = body[:figure.start(1)] + str((int(figure[1]) + 1) % 10) + body[figure.end(1):]
    readme = tmp_path / "README.md"
    readme.write_text(text.replace(body, edited, 1))
    assert tables.main(["--check", "--readme", str(readme)]) == 1
    assert tables.main(["--readme", str(readme)]) == 0  # rewrites it
    assert readme.read_text() == text


def test_ablation_prose_quotes_the_generated_table():
    # The prose under the ablation table cites figures; each must be one the table shows.
    tables = _tables()
    match = next(m for m in tables.SECTION.finditer(README) if m["name"] == "objective_ablation")
    prose = README[match.end():README.index("## Documentation", match.end())]
    figures = re.findall(r"(?<![\d.])0\.\d{3}(?!\d)", prose)
    assert figures, "the prose cites no figure"
    missing = [f for f in figures if f not in match["body"]]
    assert not missing, f"figures in the prose that the table does not show: {missing}"
