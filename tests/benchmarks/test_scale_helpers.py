"""The scale benchmark's statistics and sampling, and its guard against scoring "before" on an edited model."""

from __future__ import annotations

import pytest

from benchmarks.scale import Bench, interval, sample
from editing.data.records import EditRecord


def test_interval_is_a_clipped_normal_interval_around_the_mean():
    mean, low, high = interval([1.0, 0.0, 1.0, 1.0])
    assert mean == pytest.approx(0.75) and 0.0 <= low < mean < high == 1.0
    assert interval([0.5]) == (0.5, 0.5, 0.5)


def test_sample_is_evenly_spaced_keeps_the_ends_and_never_repeats():
    records = list(range(100))
    chosen = sample(records, 5)
    assert chosen[0] == 0 and chosen[-1] == 99 and len(set(chosen)) == 5
    assert sample(records[:3], 5) == [0, 1, 2] and sample(records, 1) == [0]


def test_evaluating_without_unedited_scores_is_refused():
    bench = Bench(loaded=None, texts=[])
    with pytest.raises(RuntimeError, match="scores_before"):
        bench.evaluate([EditRecord("r1", "The capital of France is", "Rome")], with_perplexity=False)


def test_solver_grid_cells_name_multipliers_and_optionally_neighbours():
    import argparse

    from benchmarks.solver_sweep import _grid

    assert _grid("1x1,0.125x16,1x1x8x10,1x1x0x4x8,1x1x0x1x8x6") == [
        (1.0, 1.0, 0, 0.0, 0, 0), (0.125, 16.0, 0, 0.0, 0, 0), (1.0, 1.0, 8, 10.0, 0, 0), (1.0, 1.0, 0, 4.0, 8, 0),
        (1.0, 1.0, 0, 1.0, 8, 6),
    ]  # fmt: skip
    for bad in ("1x2x3", "1x1x0x1x8x6x2"):
        with pytest.raises(argparse.ArgumentTypeError, match=bad):
            _grid(bad)


def test_same_relation_batches_hold_one_relation_each():
    from benchmarks.solver_sweep import same_relation_records
    from editing.data.records import PromptAnswer

    def record(index: int, template: str, subject: str, neighbour: str) -> EditRecord:
        probe = PromptAnswer(template.format(neighbour), "x", "neighborhood")
        return EditRecord(f"r{index}", template.format(subject), "y", subject=subject, locality=(probe,))

    capitals = [record(i, "The capital city of {} is", f"Land{i}", f"Land{i + 50}") for i in range(5)]
    languages = [
        record(10 + i, "The official language of {} is", f"Nation{i}", f"Nation{i + 50}") for i in range(3)
    ]
    mixed = [
        capitals[0],
        languages[0],
        capitals[1],
        languages[1],
        capitals[2],
        capitals[3],
        languages[2],
        capitals[4],
    ]
    chosen = same_relation_records(mixed, 2, 8)
    assert len(chosen) == 6  # 4 of 5 capitals and 2 of 3 languages fill whole batches of 2
    for start in range(0, len(chosen), 2):
        first, second = chosen[start : start + 2]
        assert first.prompt.split(" of ")[0] == second.prompt.split(" of ")[0]
    assert same_relation_records(mixed, 2, 4) == chosen[:4]
