"""The training-speed benchmark's summary and report (the timing itself runs in the benchmark)."""

from __future__ import annotations

import pytest

from benchmarks.train_speed import summarise
from benchmarks.train_speed_report import write_report

ROWS = [
    {"seconds": 4.0, "group_size": 32, "general_text": True},
    {"seconds": 1.0, "group_size": 1, "general_text": False},
    {"seconds": 2.0, "group_size": 1, "general_text": False},
    {"seconds": 3.0, "group_size": 8, "general_text": False},
]


def test_summary_splits_steps_by_general_text_and_group_size():
    summary = summarise(ROWS)
    assert summary["steps_per_second"] == pytest.approx(4 / 10)
    assert summary["median_with_general_text"] == 4.0 and summary["median_without_general_text"] == 2.0
    assert summary["median_by_group_size"] == {1: 1.5, 8: 3.0, 32: 4.0}


def test_report_puts_a_baseline_beside_the_run_and_plots_both(tmp_path):
    machine = {"processor": "x86_64", "threads": 2, "fast_bf16": False}
    baseline = {"tag": "before", "machine": machine, "rows": ROWS, **summarise(ROWS)}  # no total saved
    faster = [{**row, "seconds": row["seconds"] / 2} for row in ROWS]
    run = {"tag": "after", "commit": "abc1234", "machine": machine, "rows": faster, **summarise(faster),
           "total_seconds": 5.0, "length_chunking": {"steps": 4, "median_seconds_padded": 1.2,
                                                     "median_seconds_chunked": 1.0, "speedup": 1.2}}  # fmt: skip
    write_report([baseline, run], tmp_path, "after")
    table = (tmp_path / "train-speed-after.md").read_text()
    assert "| | before | after |" in table
    assert "| seconds for those steps | 10 | 5 |" in table  # the baseline's total from its rows
    assert "| commit | - | abc1234 |" in table and "(1.20x)" in table
    assert (tmp_path / "train-speed-after.png").stat().st_size > 0
