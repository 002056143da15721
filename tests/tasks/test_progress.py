"""Progress lines: the time-left estimate (from the rate, capped by a budget), throttling, and what the
editor trainer's callbacks add (the step and the latest validation score)."""

from __future__ import annotations

import logging

import pytest

from tasks.progress import RECORD_FIELD, Progress, format_seconds, progress_callback, training_callbacks


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def lines(caplog):
    caplog.set_level(logging.INFO, logger="mend.progress")
    return lambda: [record.getMessage() for record in caplog.records if hasattr(record, RECORD_FIELD)]


@pytest.mark.parametrize(
    ("seconds", "text"), [(None, "?"), (42, "42 s"), (300, "5 min"), (3900, "1 h 05 min")]
)
def test_durations_read_as_people_say_them(seconds, text):
    assert format_seconds(seconds) == text


def test_time_left_follows_the_rate_and_a_budget_caps_it(lines):
    clock = Clock()
    progress = Progress("building the locality pool", 100, unit="prompts", clock=clock, every_seconds=0)
    clock.now = 20.0
    progress.update(25)  # 20 s for 25: 75 more take 60 s
    assert lines()[-1] == "building the locality pool: prompts 25 of 100 · about 60 s left"
    capped = Progress("training the editor", 1000, clock=clock, budget_seconds=30.0, every_seconds=0)
    clock.now += 10.0
    assert capped.seconds_left(10) == 20.0  # the rate says 990 s, the budget ends it in 20 s


def test_updates_are_throttled_but_a_forced_one_and_the_finish_always_show(lines):
    clock = Clock()
    progress = Progress("evaluating", 10, clock=clock, every_seconds=10)
    progress.update(1)
    clock.now = 5.0
    progress.update(2)  # too soon
    progress.update(3, force=True)
    progress.finish()
    assert [line.split(":")[1].split("·")[0].strip() for line in lines()] == [
        "steps 1 of 10", "steps 3 of 10", "done in 5 s",
    ]  # fmt: skip


def test_training_lines_carry_the_latest_validation_score_and_metrics_still_reach_their_sink(lines):
    clock = Clock()
    sink = []
    progress = Progress(
        "training the editor", None, unit="step", budget_seconds=600, clock=clock, every_seconds=0
    )
    on_metrics, on_progress = training_callbacks(progress, lambda step, values: sink.append((step, values)))
    clock.now = 60.0
    on_progress(100, 10_000)
    on_metrics(200, {"val/score": 0.8125, "val/loss": 1.0})
    assert sink == [(200, {"val/score": 0.8125, "val/loss": 1.0})]
    assert lines() == [
        "training the editor: step 100 · about 9 min left",
        "training the editor: step 200 · validation score 0.812 · about 9 min left",
    ]


def test_a_library_callback_starts_its_progress_at_the_first_call_and_finishes_at_the_total(lines):
    report = progress_callback("measuring protected keys", "prompts")
    report(0, 4)
    report(4, 4)
    assert lines()[0].startswith("measuring protected keys: prompts 0 of 4") and "done in" in lines()[-1]
