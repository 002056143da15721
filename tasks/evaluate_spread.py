"""Single-edit evaluation of a dataset slice in chunks, each chunk a task that a Dask worker can run.

A chunk is independent of every other: its worker loads the base model and the editor itself, edits
each record alone, scores it and undoes the edit bit-exactly (``run_single_edits``), so the rows of all
chunks, put back in order, are the rows of one sequential evaluation. Only the dataset's path, the
model's source and the editor's path travel to the workers, never a model or a tensor.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task

LOGGER = logging.getLogger(__name__)


class EvaluationSpecError(ValueError):
    """An evaluation request names an invalid slice or chunk size; the message names the field."""


@dataclass(frozen=True)
class EvaluationSpec:
    """What to evaluate: records ``[offset, offset + limit)`` of ``data`` edited by ``editor`` on ``model``."""

    data: str  # dataset file (any read_records format), as the workers see it
    editor: str = "ft-kl"  # a name of editing.editors.EDITOR_NAMES
    editor_path: str | None = None  # checkpoint directory (MEND)
    model: str = "default"  # base model source (editing.core.models.load_model)
    limit: int = 20
    offset: int = 0
    # Records per task. A multiple of the scoring batch (16) keeps every scoring batch, and so every
    # score, identical to the sequential run's.
    chunk_size: int = 64

    def __post_init__(self) -> None:
        for name in ("limit", "chunk_size"):
            if getattr(self, name) < 1:
                raise EvaluationSpecError(f"EvaluationSpec.{name} must be >= 1, got {getattr(self, name)}")
        if self.offset < 0:
            raise EvaluationSpecError(f"EvaluationSpec.offset must be >= 0, got {self.offset}")
        if not Path(self.data).is_file():
            raise EvaluationSpecError(f"EvaluationSpec.data: {self.data} is not a file")

    def chunks(self) -> list[tuple[int, int]]:
        """(offset, count) of each task, in dataset order."""
        end = self.offset + self.limit
        return [
            (start, min(self.chunk_size, end - start)) for start in range(self.offset, end, self.chunk_size)
        ]


def evaluate_chunk(spec: EvaluationSpec, offset: int, count: int) -> list[dict[str, Any]]:
    """The rows of records ``[offset, offset + count)``, each edited alone on a freshly loaded model."""
    from editing.core.models import load_model
    from editing.data.records import read_records
    from editing.editors import build_editor
    from editing.evaluation.evaluate import run_single_edits

    loaded = load_model(spec.model)
    editor = build_editor(spec.editor, loaded, editor_path=spec.editor_path)
    records = read_records(Path(spec.data), limit=count, offset=offset).records
    evaluation = run_single_edits(editor, loaded.model, loaded.tokenizer, records)
    LOGGER.info("evaluated records %d-%d", offset, offset + len(records) - 1)
    return evaluation.rows


@task(name="evaluate-chunk", retries=1, retry_delay_seconds=5)
def evaluate_chunk_task(spec: EvaluationSpec, offset: int, count: int) -> list[dict[str, Any]]:
    # One retry: a worker lost mid-chunk (a Dask worker restarted) reruns the chunk elsewhere; the
    # chunk has no side effects, so running it twice is harmless.
    return evaluate_chunk(spec, offset, count)


def dask_task_runner(workers: int, address: str | None = None):
    """A DaskTaskRunner on the cluster at ``address`` (``MEND_DASK_ADDRESS``), or on a local cluster of
    ``workers`` processes of one thread each (a model's matrix products already use the cores it has)."""
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    if workers < 1:
        raise EvaluationSpecError(f"workers must be >= 1, got {workers}")
    return DaskTaskRunner(
        # A random dashboard port: a fixed one collides with any other cluster on the machine.
        cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                        "dashboard_address": ":0"},
    )  # fmt: skip
