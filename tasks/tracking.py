"""The MLflow sink: where runs, metrics and artifacts of the pipeline go.

By default everything stays on this machine: a SQLite file ``.mend/mlflow.db`` and an artifact directory
``.mend/mlartifacts`` under ``$MEND_HOME`` (or the working directory). ``MEND_MLFLOW_TRACKING_URI`` or
``MLFLOW_TRACKING_URI`` point at any tracking server instead.

Logging functions take an optional ``run_id``: Prefect may run tasks in worker threads, where MLflow's
thread-local "active run" is not visible, so tasks pass the run id explicitly. Without an active run or
a run id they raise instead of letting MLflow open a stray run. ``mlflow`` is imported inside functions,
so importing this module costs nothing.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

LOGGER = logging.getLogger(__name__)

TRACKING_URI_ENV = "MEND_MLFLOW_TRACKING_URI"
MEND_HOME_ENV = "MEND_HOME"
DEFAULT_EXPERIMENT = "mend-fix"
# MLflow rejects longer parameter values; longer ones belong in a JSON artifact.
_MAX_PARAM_LENGTH = 6000


class NoActiveRunError(RuntimeError):
    """Something was to be logged, but neither a run id was given nor a run is active."""


def mend_home() -> Path:
    """Local state of the pipeline: ``$MEND_HOME`` or ``./.mend``."""
    configured = os.environ.get(MEND_HOME_ENV)
    return Path(configured) if configured else Path.cwd() / ".mend"


def default_tracking_uri() -> str:
    return f"sqlite:///{(mend_home() / 'mlflow.db').absolute()}"


def _sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///<path>`` URI (four slashes for an absolute path)."""
    prefix = "sqlite:///"
    return Path(tracking_uri[len(prefix) :].split("?", 1)[0]) if tracking_uri.startswith(prefix) else None


def local_artifact_root(tracking_uri: str) -> str | None:
    """Artifact location for experiments of a SQLite store: ``mlartifacts`` next to the database.

    Servers choose their own artifact store, so for any other URI this is None.
    """
    database = _sqlite_path(tracking_uri)
    return None if database is None else (database.parent / "mlartifacts").absolute().as_uri()


def configure_tracking(uri: str | None = None) -> str:
    """Point MLflow (tracking and registry) at ``uri`` or the configured default; returns the URI.

    Order: ``uri``, ``$MEND_MLFLOW_TRACKING_URI``, ``$MLFLOW_TRACKING_URI``, a URI already set through
    ``mlflow.set_tracking_uri``, then the local SQLite default.
    """
    import mlflow

    resolved = uri or os.environ.get(TRACKING_URI_ENV) or os.environ.get("MLFLOW_TRACKING_URI")
    if not resolved and mlflow.is_tracking_uri_set():
        resolved = mlflow.get_tracking_uri()
    resolved = resolved or default_tracking_uri()
    if (database := _sqlite_path(resolved)) is not None:
        database.parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(resolved)
    mlflow.set_registry_uri(resolved)
    return resolved


def ensure_experiment(name: str = DEFAULT_EXPERIMENT) -> str:
    """Id of the experiment ``name``, created (with a local artifact root for SQLite) if missing."""
    import mlflow
    from mlflow.exceptions import MlflowException

    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    artifact_root = local_artifact_root(mlflow.get_tracking_uri())
    try:
        return mlflow.create_experiment(name, artifact_location=artifact_root)
    except MlflowException:
        # Another process created it between our lookup and create.
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


@contextmanager
def fix_run(
    experiment: str = DEFAULT_EXPERIMENT, run_name: str | None = None, tags: Mapping[str, str] | None = None
) -> Iterator[str]:
    """Open an MLflow run for the block and yield its id; the run ends FAILED if the block raises."""
    import mlflow

    configure_tracking()
    experiment_id = ensure_experiment(experiment)
    nested = mlflow.active_run() is not None
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=run_name, tags=dict(tags or {}), nested=nested
    ) as run:
        LOGGER.info("MLflow run %s (%s) in experiment %s", run.info.run_id, run_name, experiment)
        yield run.info.run_id


def _run_id(run_id: str | None) -> str:
    import mlflow

    if run_id:
        return run_id
    active = mlflow.active_run()
    if active is None:
        raise NoActiveRunError("no run_id given and no active MLflow run; open one with fix_run(...)")
    return active.info.run_id


def _client():
    import mlflow

    return mlflow.MlflowClient()


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _param_value(name: str, value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if len(text) > _MAX_PARAM_LENGTH:
        raise ValueError(f"parameter {name!r} is {len(text)} characters; log it with log_json instead")
    return text


def log_params(params: Mapping[str, Any], *, run_id: str | None = None) -> None:
    """Log parameters; nested mappings become dotted names, other values JSON text."""
    from mlflow.entities import Param

    flat = _flatten(params)
    entries = [Param(name, _param_value(name, value)) for name, value in flat.items()]
    _client().log_batch(_run_id(run_id), params=entries)


def _metric_value(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError) as error:
        raise TypeError(f"metric {name!r} must be a number, got {value!r}") from error
    if not math.isfinite(number):
        LOGGER.warning("metric %s is %s", name, number)
    return number


def log_metrics(metrics: Mapping[str, Any], step: int | None = None, *, run_id: str | None = None) -> None:
    """Log numeric metrics (at ``step`` when given). Non-numbers raise, naming the metric."""
    import time

    from mlflow.entities import Metric

    timestamp = int(time.time() * 1000)
    entries = [
        Metric(name, _metric_value(name, value), timestamp, step or 0) for name, value in metrics.items()
    ]
    _client().log_batch(_run_id(run_id), metrics=entries)


def metrics_callback(
    prefix: str = "", *, run_id: str | None = None
) -> Callable[[int, Mapping[str, Any]], None]:
    """An ``on_metrics(step, metrics)`` callback (what the editor trainer reports to) that logs to MLflow.

    Metric names become ``<prefix>/<name>``. The run id is fixed when the callback is made, so the
    trainer may call it from any thread.
    """
    target = _run_id(run_id)

    def on_metrics(step: int, metrics: Mapping[str, Any]) -> None:
        named = {f"{prefix}/{name}" if prefix else name: value for name, value in metrics.items()}
        log_metrics(named, step=step, run_id=target)

    return on_metrics


def log_artifact(path: str | Path, artifact_path: str | None = None, *, run_id: str | None = None) -> None:
    """Log a file, or every file of a directory, under ``artifact_path`` of the run."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"artifact {path} does not exist")
    client, target = _client(), _run_id(run_id)
    if path.is_dir():
        client.log_artifacts(target, str(path), artifact_path)
    else:
        client.log_artifact(target, str(path), artifact_path)


def log_json(obj: Any, artifact_file: str, *, run_id: str | None = None) -> None:
    """Log ``obj`` as a JSON file (for resolved configs, reports, gate results)."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=str)
    _client().log_text(_run_id(run_id), text, artifact_file)


def log_table_csv(
    rows: Sequence[Mapping[str, Any]], artifact_file: str, *, run_id: str | None = None
) -> None:
    """Log rows as CSV; columns are the union of the rows' keys in first-seen order."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    target = _run_id(run_id)
    artifact_dir, file_name = os.path.split(artifact_file)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / file_name
        with path.open("w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=list(columns))
            writer.writeheader()
            writer.writerows(rows)
        _client().log_artifact(target, str(path), artifact_dir or None)


def log_figure(figure: Figure, artifact_file: str, *, run_id: str | None = None) -> None:
    """Log a matplotlib figure as an image artifact (format from the file's extension)."""
    _client().log_figure(_run_id(run_id), figure, artifact_file)
