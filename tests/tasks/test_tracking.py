"""The MLflow sink against a real SQLite tracking store: what is logged can be read back."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import mlflow
import pytest

from tasks import tracking

# Fixture local_tracking_uri.


def _artifact_paths(run_id: str, path: str | None = None) -> list[str]:
    found = []
    for entry in mlflow.MlflowClient().list_artifacts(run_id, path):
        found += _artifact_paths(run_id, entry.path) if entry.is_dir else [entry.path]
    return sorted(found)


def test_run_logs_params_metrics_and_artifacts(local_tracking_uri, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "a.txt").write_text("a")
    (tmp_path / "file.txt").write_text("f")
    figure = Figure()
    figure.add_subplot().plot([0, 1], [1, 0])
    with tracking.fix_run("exp-1", run_name="fix", tags={"flow": "nightly"}) as run_id:
        tracking.log_params({"editor": {"rank": 4, "layers": [1, 2]}, "model": "tiny"})
        tracking.log_metrics({"edit_success": 0.75, "count": 3}, step=2)
        tracking.log_json({"passed": True}, "gate/result.json")
        tracking.log_table_csv([{"id": "a", "ok": 1}, {"id": "b", "note": "x"}], "tables/flags.csv")
        tracking.log_figure(figure, "plots/curve.png")
        tracking.log_artifact(tmp_path / "dir", "inputs")
        tracking.log_artifact(tmp_path / "file.txt")
    run = mlflow.MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["flow"] == "nightly"
    assert run.data.params == {"editor.rank": "4", "editor.layers": "[1, 2]", "model": "tiny"}
    history = mlflow.MlflowClient().get_metric_history(run_id, "edit_success")
    assert [(metric.value, metric.step) for metric in history] == [(0.75, 2)]
    assert _artifact_paths(run_id) == [
        "file.txt",
        "gate/result.json",
        "inputs/a.txt",
        "plots/curve.png",
        "tables/flags.csv",
    ]
    local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="tables/flags.csv"))
    rows = list(csv.DictReader(local.open()))
    assert rows == [{"id": "a", "ok": "1", "note": ""}, {"id": "b", "ok": "", "note": "x"}]
    gate = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/gate/result.json")
    assert gate == {"passed": True}
    # Artifacts stay beside the SQLite database, not in the working directory.
    assert run.info.artifact_uri.startswith(
        Path(local_tracking_uri.removeprefix("sqlite:///")).parent.as_uri()
    )


def test_metrics_callback_prefixes_and_keeps_steps(local_tracking_uri):
    with tracking.fix_run(run_name="train") as run_id:
        on_metrics = tracking.metrics_callback("train")
        on_metrics(1, {"loss": 2.0})
        on_metrics(5, {"loss": 1.5, "edit_success": 0.5})
        with pytest.raises(TypeError, match="train/label"):
            on_metrics(6, {"label": "not a number"})
    history = mlflow.MlflowClient().get_metric_history(run_id, "train/loss")
    assert [(metric.step, metric.value) for metric in history] == [(1, 2.0), (5, 1.5)]


def test_logging_without_a_run_is_an_error(local_tracking_uri):
    with pytest.raises(tracking.NoActiveRunError):
        tracking.log_metrics({"x": 1.0})
    assert mlflow.active_run() is None  # and no stray run was opened


def test_explicit_run_id_works_without_an_active_run(local_tracking_uri):
    with tracking.fix_run(run_name="outer") as run_id:
        pass
    tracking.log_params({"late": "yes"}, run_id=run_id)
    tracking.log_json([1, 2], "late.json", run_id=run_id)
    assert mlflow.MlflowClient().get_run(run_id).data.params == {"late": "yes"}
    assert json.loads(
        Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="late.json")).read_text()
    ) == [1, 2]


def test_failed_block_marks_the_run_failed(local_tracking_uri):
    with pytest.raises(RuntimeError, match="boom"), tracking.fix_run(run_name="doomed") as run_id:
        raise RuntimeError("boom")
    assert mlflow.MlflowClient().get_run(run_id).info.status == "FAILED"


def test_uri_resolution_order(tmp_path, monkeypatch):
    for name in ("MEND_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MEND_HOME", str(tmp_path / "home"))
    mlflow.set_tracking_uri(None)
    try:
        default = tracking.configure_tracking()
        assert default == f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}"
        assert tracking.local_artifact_root(default) == (tmp_path / "home" / "mlartifacts").as_uri()
        monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
        assert tracking.configure_tracking() == "http://mlflow.example:5000"
        monkeypatch.setenv("MEND_MLFLOW_TRACKING_URI", "http://mend.example:5000")
        assert tracking.configure_tracking() == "http://mend.example:5000"
        assert tracking.configure_tracking("http://explicit:1") == "http://explicit:1"
        assert mlflow.get_registry_uri() == "http://explicit:1"
        assert tracking.local_artifact_root("http://explicit:1") is None
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
