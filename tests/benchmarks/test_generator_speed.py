"""The generator benchmark's table judges the issue's target only for the size it names."""

from __future__ import annotations

from benchmarks.generator_speed import markdown


def _result(records: int, wanted: int, seconds: float) -> dict:
    return {"records": records, "build_seconds": seconds, "build_cpu_seconds": 2 * seconds,
            "cache_load_seconds": 0.5, "date": "2026-12-03", "machine": "test",
            "config": {"examples": wanted}, "info": {"prompts_asked": 40_000}}  # fmt: skip


def test_the_target_is_met_only_with_every_record_in_time():
    assert "| met |" in markdown(_result(10_000, 10_000, 599))
    assert "| missed |" in markdown(_result(10_000, 10_000, 601))
    assert "| missed |" in markdown(_result(9_000, 10_000, 300))  # the subjects ran out of facts


def test_a_smaller_run_is_not_judged_against_the_target():
    table = markdown(_result(1_000, 1_000, 30))
    assert "not judged (1,000 wanted" in table and "| 33.3 |" in table
