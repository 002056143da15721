"""The editor's learning-rate schedule: cosine over whichever budget ends first, warm-up, and the trainer
stepping at the scheduled rates."""

from __future__ import annotations

import itertools
import math

import pytest

from editing.config import ConfigError, TrainConfig
from editing.data.records import read_records
from editing.training.schedule import learning_rate_factor, training_progress
from tests.editing.test_trainer import COUNTERFACT_TRAIN, _trainer


def test_cosine_falls_from_one_to_the_floor_and_constant_stays():
    cosine = TrainConfig(lr_schedule="cosine", lr_floor=0.1, max_steps=100)
    factors = [learning_rate_factor(cosine, step, step / 100) for step in range(101)]
    assert factors[0] == pytest.approx(1.0)
    assert factors[50] == pytest.approx(0.55)  # halfway: midway between 1 and the floor
    assert factors[100] == pytest.approx(0.1)
    assert all(later <= earlier for earlier, later in itertools.pairwise(factors))
    constant = TrainConfig(max_steps=100)
    assert {learning_rate_factor(constant, step, step / 100) for step in range(101)} == {1.0}


def test_progress_is_steps_or_time_whichever_budget_ends_first():
    config = TrainConfig(max_steps=100, max_minutes=1.0)
    assert training_progress(config, 10, 30.0) == pytest.approx(0.5)  # time runs out first
    assert training_progress(config, 90, 30.0) == pytest.approx(0.9)  # steps run out first
    assert training_progress(config, 10, 600.0) == 1.0  # past the budget: clipped
    assert training_progress(TrainConfig(max_steps=100), 10, 1e6) == pytest.approx(0.1)  # no time budget


def test_warmup_ramps_linearly_then_hands_over():
    config = TrainConfig(lr_schedule="cosine", warmup_steps=4, max_steps=100)
    assert [learning_rate_factor(config, step, 0.0) for step in range(5)] == pytest.approx(
        [0.25, 0.5, 0.75, 1.0, 1.0]
    )


@pytest.mark.parametrize(
    "settings, field",
    [
        ({"lr_schedule": "linear"}, "lr_schedule"),
        ({"lr_floor": 1.5}, "lr_floor"),
        ({"warmup_steps": -1}, "warmup_steps"),
    ],
)
def test_bad_schedule_settings_name_the_field(settings, field):
    with pytest.raises(ConfigError, match=field):
        TrainConfig(**settings)


def test_trainer_steps_at_the_scheduled_rates(tiny_llama):
    records = read_records(COUNTERFACT_TRAIN, limit=120).records
    logged: dict[int, float] = {}

    trainer = _trainer(tiny_llama, records, max_steps=8, lr_schedule="cosine", lr_floor=0.2, val_every=8,
                       log_every=1, early_stop_patience=0)  # fmt: skip
    trainer.on_metrics = lambda step, metrics: logged.update(
        {step: metrics["train/lr_factor"]} if "train/lr_factor" in metrics else {}
    )
    trainer.fit()
    # The last optimizer step was step 7 of 8: its factor is the cosine at progress 7/8.
    last = 0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * 7 / 8))
    assert logged[8] == pytest.approx(last)
    assert logged[1] == pytest.approx(1.0)
    config = trainer.config
    rates = [group["lr"] for group in trainer.optimizer.param_groups]
    assert rates == pytest.approx(
        [config.editor_lr * last, config.step_size_lr * last, config.solver_lr * last]
    )
