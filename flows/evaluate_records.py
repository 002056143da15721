"""A large single-edit evaluation spread over workers: one task per chunk of records, on whatever task
runner the caller gives the flow (``DaskTaskRunner`` for several processes or a Dask cluster)."""

from __future__ import annotations

from prefect import flow

from editing.evaluation.evaluate import EditEvaluation, aggregate
from tasks.evaluate_spread import EvaluationSpec, dask_task_runner, evaluate_chunk_task


@flow(name="evaluate-records")
def evaluate_records_flow(spec: EvaluationSpec) -> EditEvaluation:
    futures = [evaluate_chunk_task.submit(spec, offset, count) for offset, count in spec.chunks()]
    rows = [row for future in futures for row in future.result()]  # dataset order, whatever finished first
    return EditEvaluation(rows, aggregate(rows))


def evaluate_records(spec: EvaluationSpec, *, workers: int = 2, address: str | None = None) -> EditEvaluation:
    """Run the flow on a Dask task runner: ``address`` names a running scheduler, else a local cluster of
    ``workers`` processes is started for this run and stopped after it."""
    runner = dask_task_runner(workers, address)
    return evaluate_records_flow.with_options(task_runner=runner)(spec)
