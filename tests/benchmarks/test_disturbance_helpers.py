"""The disturbance calibration: its statistics, its texts, and one measured batch on a tiny model."""

from __future__ import annotations

import argparse
import math

import pytest

from benchmarks.disturbance import calibration_texts, measure, quantile, summary_by_size
from benchmarks.scale import Bench, _caps
from editing.data.protected_sources import GENERAL_TEXTS, training_texts
from editing.data.records import read_texts
from tests.editing.test_aggregation import RECORDS, _ls_editor
from tests.paths import DATA_DIR


def test_quantile_interpolates_between_order_statistics():
    assert quantile([5.0, 1.0, 3.0, 2.0, 4.0], 0.5) == 3.0
    assert quantile([1.0, 2.0, 3.0, 4.0, 5.0], 0.95) == pytest.approx(4.8)
    assert quantile([7.0], 0.95) == 7.0


def test_caps_parse_none_and_positive_numbers_only():
    assert _caps("none,0.05") == [None, 0.05]
    for bad in ("0", "-1", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            _caps(bad)


def test_calibration_texts_are_neither_trained_on_nor_scored():
    texts = calibration_texts(DATA_DIR, 50)
    assert len(texts) == 50
    assert not set(texts) & set(training_texts(DATA_DIR, 1_500))
    assert not set(texts) & set(read_texts(DATA_DIR / "me_ppl/ME-PPL_1k.json"))
    assert set(texts) <= set(read_texts(DATA_DIR / GENERAL_TEXTS))


def test_each_batch_reports_its_largest_weight_disturbance_and_its_perplexity(tiny_llama):
    editor = _ls_editor(tiny_llama).with_disturbance_cap(math.inf, tiny_llama.model)
    bench = Bench.measure(tiny_llama, ["the cat sat on the mat", "a dog ran in the park"])
    rows = measure(bench, editor, RECORDS, sizes=[1, 2], edits_per_size=2, ppl_batches=1)
    assert [(r["size"], r["batch"]) for r in rows] == [(1, 0), (1, 1), (2, 0)]
    for row in rows:
        assert row["disturbance"] == max(row["by_weight"].values()) > 0
    assert "ppl_change" in rows[0] and "ppl_change" not in rows[1]
    table = summary_by_size(rows)
    assert [t["size"] for t in table] == [1, 2] and table[0]["batches"] == 2
