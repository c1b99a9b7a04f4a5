"""The README's generated tables are what the committed result files render to
(experiments/readme_tables.py), so a figure cannot be edited by hand or go stale."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tables():
    path = ROOT / "experiments" / "readme_tables.py"
    spec = importlib.util.spec_from_file_location("readme_tables", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("readme_tables", module)
    spec.loader.exec_module(module)
    return module


def test_readme_generated_sections_are_current():
    tables = _tables()
    text = (ROOT / "README.md").read_text()
    names = [m["name"] for m in tables.SECTION.finditer(text)]
    assert "baseline_480s" in names, names  # the comparison table is generated
    new, stale = tables.update(text)
    assert not stale, f"stale: {stale}; run python experiments/readme_tables.py"
    assert new == text


def test_a_hand_edited_figure_is_caught(tmp_path):
    tables = _tables()
    text = (ROOT / "README.md").read_text()
    match = next(tables.SECTION.finditer(text))
    body = match["body"]
    edited = body.replace("0.", "9.", 1)
    assert edited != body
    readme = tmp_path / "README.md"
    readme.write_text(text.replace(body, edited, 1))
    assert tables.main(["--check", "--readme", str(readme)]) == 1
    assert tables.main(["--readme", str(readme)]) == 0  # rewrites it
    assert readme.read_text() == text
