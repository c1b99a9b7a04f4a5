"""The generated tables of the README and docs/*.md are what the committed result files
render to (experiments/readme_tables.py), so a figure cannot be edited by hand or go
stale; the figures the README quotes from long experiments appear in the pages it cites
for them, next to a word that stands next to them in the README."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
#: Every table the README must generate from experiments/results/NAME.json (or, for a
#: name in readme_tables.SECTIONS, from several files, a row each).
GENERATED = ("baseline_480s", "objective_ablation", "benchmarks")
#: The docs pages' generated tables: the benchmarks' full tables, by page.
DOC_GENERATED = {"docs/pooling.md": ("bench_pool",),
                 "docs/data.md": ("bench_convert", "bench_dataset")}
#: A figure: an integer, a decimal or a float in e-notation, standing alone.
NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?:e[-+]?\d+)?(?!\d)")
LINK = re.compile(r"\]\(([^)#]+)(?:#[^)]*)?\)")
#: A word that can place a figure (four letters or more; digits and units are not words).
WORD = re.compile(r"[A-Za-z_]{4,}")
#: Words too common to place a figure.
COMMON = frozenset("with from that this than then each also docs were what when into".split())
#: A figure's context: this many words either side of it in the README cell, and this
#: many characters either side of it in the cited page (about two lines of prose).
CONTEXT_WORDS, CONTEXT_CHARS = 3, 300


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
    # The prose under the ablation tables cites figures; each must be one they show.
    tables = _tables()
    found = {m["name"]: m for m in tables.SECTION.finditer(README)}
    match = found["objective_ablation"]
    shown = "".join(m["body"] for name, m in found.items()
                    if name.startswith("objective_ablation"))
    prose = tables.SECTION.sub("", README[match.end():README.index("## Documentation",
                                                                    match.end())])
    figures = re.findall(r"(?<![\d.])0\.\d{3}(?!\d)", prose)
    assert figures, "the prose cites no figure"
    missing = [f for f in figures if f not in shown]
    assert not missing, f"figures in the prose that the table does not show: {missing}"


def _rounded_values(node) -> set[str]:
    """Every float of a result file, as the tables print it (three decimals)."""
    if isinstance(node, dict):
        return set().union(*map(_rounded_values, node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*map(_rounded_values, node)) if node else set()
    return {f"{node:.3f}"} if isinstance(node, float) else set()


def summary_unshown(readme: str = README) -> list[str]:
    """Figures of the comparison's summary (the hand table and prose above the generated
    ``baseline_480s`` block) that neither the block, nor a run in its result file (one
    seed's figure), nor docs/model.md (which the math2 prose cites) shows."""
    tables = _tables()
    start = readme.index("### Against byte-level GRU and Transformer")
    summary = readme[start:readme.index("<!-- generated: baseline_480s -->", start)]
    shown = tables.render("baseline_480s") + (ROOT / "docs" / "model.md").read_text()
    runs = _rounded_values(json.loads(
        (ROOT / "experiments" / "results" / "baseline_480s.json").read_text()))
    figures = re.findall(r"(?<![\d.])\d\.\d{3}(?!\d)", summary)
    assert len(figures) >= 30, figures
    return [f for f in figures if f not in shown and f not in runs]


def test_comparison_summary_quotes_the_generated_table():
    assert not summary_unshown()
    # a mean edited by hand is caught
    assert summary_unshown(README.replace("**0.887 ± 0.013**", "**0.939 ± 0.013**")) == \
        ["0.939"]


def quoted_rows(readme: str = README) -> list[tuple[str, str, list[str]]]:
    """The hand-written table of "Where things stand": ``(what, figure, cited files)``."""
    start = readme.index("## Where things stand (measured)")
    section = readme[start:readme.index("<!-- generated: benchmarks -->", start)]
    rows = []
    for line in section.splitlines():
        if not line.startswith("| ") or line.startswith(("| what ", "|---")):
            continue
        cells = line.strip().strip("|").split(" | ")
        assert len(cells) == 4, line  # what | figure | command | source
        rows.append((cells[0].strip(), cells[1], LINK.findall(cells[3])))
    return rows


def unquoted(figure: str, sources: list[str]) -> list[str]:
    """The figures of ``figure`` that none of ``sources`` contains (as a whole number)."""
    found: set[str] = set()
    for source in sources:
        found.update(NUMBER.findall((ROOT / source).read_text()))
    return [f for f in NUMBER.findall(figure) if f not in found]


def context(cell: str, match: re.Match) -> set[str]:
    """The words around a figure in a README cell: ``CONTEXT_WORDS`` either side."""
    def words(text: str) -> list[str]:
        return [w for w in map(str.lower, WORD.findall(text)) if w not in COMMON]
    return {*words(cell[:match.start()])[-CONTEXT_WORDS:],
            *words(cell[match.end():])[:CONTEXT_WORDS]}


def out_of_context(figure: str, sources: list[str]) -> list[str]:
    """The figures of ``figure`` that no cited page shows within ``CONTEXT_CHARS`` of a
    word that stands beside them in the README (a figure quoted from the wrong passage:
    the segmentation row's 1e-12 once matched docs/loss.md's float64 comparison)."""
    texts = [(ROOT / source).read_text().lower() for source in sources]
    missing = []
    for match in NUMBER.finditer(figure):
        words = context(figure, match)
        at = re.compile(rf"(?<![\w.]){re.escape(match[0])}(?!\d)")
        if not any(word in text[max(0, m.start() - CONTEXT_CHARS):m.end() + CONTEXT_CHARS]
                   for text in texts for m in at.finditer(text) for word in words):
            missing.append(match[0])
    return missing


def test_quoted_figures_appear_in_the_pages_they_cite():
    """Rows from long experiments (minutes to hours of CPU) cannot be regenerated in a
    test: each figure they quote must appear in the doc page or results file cited."""
    rows = quoted_rows()
    assert len(rows) >= 5, rows
    for what, figure, sources in rows:
        assert sources, f"row {what!r} cites no page"
        assert NUMBER.findall(figure), f"row {what!r} quotes no figure"
        missing = unquoted(figure, sources)
        assert not missing, f"row {what!r}: {missing} not in {sources}"
        missing = out_of_context(figure, sources)
        assert not missing, (f"row {what!r}: {missing} appear in {sources} but not near a "
                             "word that stands beside them in the README")


def test_a_drifted_quoted_figure_is_caught():
    what, figure, sources = next(r for r in quoted_rows() if "segmentation_nll" in r[0])
    assert not unquoted(figure, sources)
    assert unquoted(figure.replace("1e-12", "1e-13"), sources) == ["1e-13"]
    # the README once rounded docs/loss.md's 78.1x to 78x
    what, figure, sources = next(r for r in quoted_rows() if "speed since" in r[0])
    assert "78.1x" in figure and not unquoted(figure, sources)
    assert unquoted(figure.replace("78.1x", "78x"), sources) == ["78"]


def test_a_figure_quoted_out_of_context_is_caught():
    what, figure, sources = next(r for r in quoted_rows() if "segmentation_nll" in r[0])
    assert not out_of_context(figure, sources)
    # docs/loss.md has 1e-12, but for float64 results against the previous package
    assert not unquoted(figure, ["docs/loss.md", *sources])
    assert out_of_context(figure, ["docs/loss.md"])[0] == "1e-12"
    # a figure moved to another row's context
    what, figure, sources = next(r for r in quoted_rows() if "exact GED" in r[0])
    assert not out_of_context(figure, sources)
    assert out_of_context("kindergarten epochs 0.992", sources) == ["0.992"]


@pytest.mark.parametrize("page", sorted(DOC_GENERATED))
def test_docs_generated_sections_are_current(tmp_path, page):
    """The docs pages show the benchmarks' full tables rendered from the same result
    files as the README's rows, so a page cannot keep an older run's figures."""
    tables = _tables()
    text = (ROOT / page).read_text()
    names = [m["name"] for m in tables.SECTION.finditer(text)]
    assert set(DOC_GENERATED[page]) <= set(names), names
    assert (ROOT / page) in tables.PAGES
    new, stale = tables.update(text)
    assert not stale, f"{page}: stale {stale}; run python experiments/readme_tables.py"
    # an edited figure is caught, and the rewrite restores it
    body = next(m for m in tables.SECTION.finditer(text) if m["name"] in names)["body"]
    digit = re.search(r"\| (\d)", body)
    copy = tmp_path / "page.md"
    copy.write_text(text.replace(body, body[:digit.start(1)] + str((int(digit[1]) + 1) % 10)
                                 + body[digit.end(1):], 1))
    assert tables.main(["--check", "--page", str(copy)]) == 1
    assert tables.main(["--page", str(copy)]) == 0 and copy.read_text() == text


def test_benchmarks_write_what_the_readme_renders(tmp_path, monkeypatch, capsys):
    """Each cheap benchmark's ``--out`` file (tiny settings) renders to a README row with
    its measured figures and the command that wrote it."""
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))
    tables = _tables()
    runs = {"bench_model": ["--tables", "model", "--canvas", "8", "--blocks", "gps",
                            "--repeats", "1"],
            "bench_pool": ["--repeats", "3"],
            "bench_convert": ["--mb", "0.01", "--repeat", "1"],
            "bench_dataset": ["--mb", "0.05"]}
    for name, argv in runs.items():
        out = tmp_path / f"{name}.json"
        result = tables._experiment(name).main([*argv, "--out", str(out)])
        payload = json.loads(out.read_text())
        assert payload["kind"] == name
        assert payload["command"].endswith(f"experiments/{name}.py {' '.join(argv)} --out {out}")
        row = tables.ROWS[name](payload)
        assert row.startswith("| ") and row.count(" | ") == 2 and payload["command"] in row
        if name == "bench_model":
            assert f"{result['model'][0]['forward_backward']:.0f} graphs/s at canvas 8" in row
        elif name == "bench_pool":
            cpu = {k: v["cpu_s"] for k, v in result["layers"].items()}
            ratio = cpu["EdgePooling"] / cpu["ThresholdMergePool"]
            assert f"{ratio:.1f}x faster than EdgePooling" in row
        elif name == "bench_convert":
            loop = next(r for r in result["rows"]
                        if r["converter"] == "per-char loop" and r["mode"] == "bulk")
            assert f"{loop['speed_up']:.1f}x a per-character Python loop" in row
        else:
            build = result["stages"][0]
            assert build["stage"] == "build" and build["pairs"] == result["pairs"] > 0
            assert result["stages"][1]["pairs"] == result["pairs"]  # the load reads them all
            assert f"peak RSS {build['peak_mb'] / 1e3:.1f} GB building" in row
        if name in tables.RENDERERS:  # the docs pages' full table renders too
            assert payload["command"] in tables.RENDERERS[name](payload)
    capsys.readouterr()
