"""MLflow logging for a fix run: parameters, metrics and the run's artifacts, copied from the store."""

from __future__ import annotations

import logging
from typing import Any

from prefect import task

from tasks.models import download_dir, scratch_dir
from tasks.settings import FixSettings

LOGGER = logging.getLogger(__name__)


def log_run_artifacts(
    settings: FixSettings, mlflow_run_id: str, prefixes: dict[str, str | list[str]]
) -> None:
    """Copy store objects or folders into the MLflow run, each under its artifact path."""
    from tasks.tracking import log_artifact

    store = settings.open_store()
    workspace = scratch_dir("mlflow")
    pairs = [
        (path, key) for path, keys in prefixes.items() for key in ([keys] if isinstance(keys, str) else keys)
    ]
    for artifact_path, key in pairs:
        if store.exists(key):  # a single object
            local = store.download(key, workspace / artifact_path / key.rsplit("/", 1)[-1])
            log_artifact(local, artifact_path, run_id=mlflow_run_id)
        elif store.list(key.rstrip("/") + "/"):
            local = download_dir(store, key.rstrip("/") + "/", workspace / artifact_path)
            log_artifact(local, artifact_path, run_id=mlflow_run_id)


def log_evaluation_metrics(settings: FixSettings, mlflow_run_id: str, summary_key: str) -> dict[str, Any]:
    from tasks.tracking import log_metrics

    summary = settings.open_store().read_json(summary_key)
    metrics = {
        f"eval/{name}": value
        for name, value in summary["aggregates"].items()
        if isinstance(value, float | int)
    }
    for name in ("perplexity_before", "perplexity_after", "retention", "locality_regressions", "edits"):
        if isinstance(summary.get(name), float | int):
            metrics[f"eval/{name}"] = summary[name]
    log_metrics(metrics, run_id=mlflow_run_id)
    return summary


@task(name="log-to-mlflow", retries=2, retry_delay_seconds=5)
def track_task(settings: FixSettings, mlflow_run_id: str, prefixes: dict[str, str | list[str]]) -> None:
    log_run_artifacts(settings, mlflow_run_id, prefixes)


@task(name="log-parameters", retries=2, retry_delay_seconds=5)
def params_task(settings: FixSettings, mlflow_run_id: str, params: dict[str, Any]) -> None:
    from tasks.tracking import log_params

    log_params(params, run_id=mlflow_run_id)


@task(name="log-evaluation-metrics", retries=2, retry_delay_seconds=5)
def metrics_task(settings: FixSettings, mlflow_run_id: str, summary_key: str) -> dict[str, Any]:
    return log_evaluation_metrics(settings, mlflow_run_id, summary_key)
