"""The editor's learning-rate schedule: constant, or a cosine decay over whichever budget ends first.

A fix run trains its editor for a time budget, not a step count, so "how far along" is the larger of
the steps taken over ``max_steps`` and the seconds spent over ``max_minutes``. The factor is a pure
function of the trainer's (step, elapsed seconds), both of which a checkpoint keeps, so resuming needs
no scheduler state. Each optimizer group keeps the rate it was built with as ``initial_lr`` (torch's
own schedulers' key), so the schedule needs to know neither the groups' order nor the config's rates.
"""

from __future__ import annotations

import math

import torch

from editing.config import TrainConfig


def training_progress(config: TrainConfig, step: int, elapsed_seconds: float) -> float:
    """How much of its budget training has used, in [0, 1]: steps or time, whichever is further."""
    progress = step / config.max_steps
    if config.max_minutes:
        progress = max(progress, elapsed_seconds / (config.max_minutes * 60))
    return min(max(progress, 0.0), 1.0)


def learning_rate_factor(config: TrainConfig, step: int, progress: float) -> float:
    """The multiplier of every parameter group's learning rate at optimizer step ``step``.

    Linear warm-up over ``warmup_steps``, then ``constant`` stays at 1 and ``cosine`` falls from 1 to
    ``lr_floor`` as ``progress`` goes from 0 to 1.
    """
    warmup = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    if config.lr_schedule == "constant":
        return warmup
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))  # 1 -> 0
    return warmup * (config.lr_floor + (1.0 - config.lr_floor) * cosine)


def set_learning_rates(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Scale each parameter group's initial learning rate by ``factor``."""
    for group in optimizer.param_groups:
        group["lr"] = group.setdefault("initial_lr", group["lr"]) * factor
