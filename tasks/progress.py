"""Progress of the pipeline's long steps, with an estimate of the time left.

A step (editor training, the locality pool, protected keys, evaluation) reports ``done`` of ``total``
units to a ``Progress``; it estimates the time left from the rate so far (and from a time budget, when
the step has one) and leaves as a log record on the ``mend.progress`` logger, at most every
``every_seconds``. Logging is the one channel that reaches the command line from Prefect's worker threads
and, under a deployment, Prefect's own log store; the command line renders these records as one line per
update (``flows.cli_progress``), everything else only sees ordinary INFO lines.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

PROGRESS_LOGGER = "mend.progress"
RECORD_FIELD = "mend_progress"  # the attribute of a log record that carries the structured update


def format_seconds(seconds: float | None) -> str:
    """``42 s``, ``3 min``, ``1 h 05 min``; ``?`` while nothing can be estimated."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


@dataclass
class Progress:
    """One long step. ``update(done, **details)`` as work completes; ``finish()`` once at the end."""

    stage: str  # what the user reads: "training the editor", "building the locality pool"
    total: int | None  # None: only a time budget bounds the step
    unit: str = "steps"
    budget_seconds: float | None = None  # a step that stops at a time budget ends by then at the latest
    every_seconds: float = 10.0
    clock: Callable[[], float] = time.monotonic
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger(PROGRESS_LOGGER))
    _started: float = field(init=False)
    _last: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self._started = self.clock()

    def seconds_left(self, done: int) -> float | None:
        elapsed = self.clock() - self._started
        by_rate = None
        if self.total is not None and 0 < done <= self.total:
            by_rate = elapsed / done * (self.total - done)
        by_budget = None if self.budget_seconds is None else max(0.0, self.budget_seconds - elapsed)
        estimates = [value for value in (by_rate, by_budget) if value is not None]
        return min(estimates) if estimates else None

    def update(self, done: int, *, force: bool = False, **details: Any) -> None:
        now = self.clock()
        if not force and self._last is not None and now - self._last < self.every_seconds:
            return
        self._last = now
        self._emit(done, self.seconds_left(done), details)

    def finish(self, **details: Any) -> None:
        self._emit(self.total or 0, 0.0, {**details, "finished": True})

    def _emit(self, done: int, left: float | None, details: dict[str, Any]) -> None:
        payload = {"stage": self.stage, "done": done, "total": self.total, "unit": self.unit,
                   "elapsed": self.clock() - self._started, "left": left, **details}  # fmt: skip
        self.logger.info(describe(payload), extra={RECORD_FIELD: payload})


def step_started(text: str) -> None:
    """Announce a step that reports nothing while it runs (one line, e.g. applying the edits)."""
    payload = {"stage": text, "started": True}
    logging.getLogger(PROGRESS_LOGGER).info(text, extra={RECORD_FIELD: payload})


def describe(payload: dict[str, Any]) -> str:
    """One line: ``training the editor: step 120 of 900 · validation 0.81 · about 5 min left``."""
    done, total = payload["done"], payload["total"]
    if payload.get("finished"):
        text = f"{payload['stage']}: done in {format_seconds(payload['elapsed'])}"
    elif total is None:
        text = f"{payload['stage']}: {payload['unit']} {done}"
    else:
        text = f"{payload['stage']}: {payload['unit']} {done} of {total}"
    extras = [f"{name} {_value(value)}" for name, value in payload.items() if name not in _FIXED]
    if not payload.get("finished"):
        extras.append(f"about {format_seconds(payload['left'])} left")
    return " · ".join([text, *extras])


_FIXED = frozenset({"stage", "done", "total", "unit", "elapsed", "left", "finished"})


def _value(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def chunked(items: list, size: int) -> list[list]:
    """``items`` in runs of ``size``, so a step without a callback of its own can report between runs."""
    return [items[start : start + size] for start in range(0, len(items), size)] or [[]]


def training_callbacks(progress: Progress, on_metrics: Callable[[int, dict], None]):
    """``(on_metrics, on_progress)`` for the editor trainer: metrics still go to ``on_metrics`` (MLflow),
    and each progress line carries the step and the latest validation score."""
    latest: dict[str, float] = {}

    def metrics(step: int, values: dict) -> None:
        on_metrics(step, values)
        if "val/score" in values:
            latest["validation score"] = float(values["val/score"])
            progress.update(step, force=True, **latest)  # a validation is news: shown at once

    def steps(step: int, _total: int) -> None:
        progress.update(step, **latest)

    return metrics, steps


def progress_callback(stage: str, unit: str) -> Callable[[int, int], None]:
    """An ``on_progress(done, total)`` callback for a library step that knows its total only once it
    starts (the ``Progress`` is made at the first call); reports ``finish`` when ``done`` reaches it."""
    holder: list[Progress] = []

    def report(done: int, total: int) -> None:
        if not holder:
            holder.append(Progress(stage, total, unit=unit))
        if done >= total:
            holder[0].finish()
        else:
            holder[0].update(done)

    return report
