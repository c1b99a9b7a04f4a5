"""TrainingReport's files and printed table, without a Trainer run."""

from __future__ import annotations

import re
from types import SimpleNamespace

from pyg_grapheme.training.callbacks import TrainingReport

ROW = re.compile(r"^\| (q\d) \|", re.M)  # a table row's question


def test_printed_table_has_max_rows_and_the_file_has_all(tmp_path, capsys):
    rows = [(f"q{i}", "yes" if i % 2 else "no", "yes") for i in range(5)]
    report = TrainingReport(max_rows=2)
    trainer = SimpleNamespace(global_rank=0, log_dir=str(tmp_path), default_root_dir=None)
    report.on_fit_end(trainer, SimpleNamespace(examples=rows))
    printed = capsys.readouterr().out
    assert ROW.findall(printed) == ["q0", "q1"]
    assert "exact match: 0.400 (2/5)" in printed  # the count covers every row, not the shown ones
    written = (tmp_path / "answers.md").read_text(encoding="utf-8")
    assert ROW.findall(written) == [f"q{i}" for i in range(5)]
    assert (tmp_path / "curves.png").read_bytes().startswith(b"\x89PNG")


def test_nothing_printed_or_written_on_other_ranks(tmp_path, capsys):
    trainer = SimpleNamespace(global_rank=1, log_dir=str(tmp_path), default_root_dir=None)
    TrainingReport().on_fit_end(trainer, SimpleNamespace(examples=[("q", "a", "a")]))
    assert capsys.readouterr().out == ""
    assert not list(tmp_path.iterdir())
