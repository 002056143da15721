"""The fix pipeline against real servers: flags and artifacts in SeaweedFS (S3), tracking and registry
on an MLflow server backed by PostgreSQL, orchestration by a temporary Prefect server."""

from __future__ import annotations

import pytest

from tests.pipeline_fixtures import LENIENT

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_server")]


def test_fix_run_with_s3_store_and_mlflow_server(
    make_settings, s3_server, s3_prefix_uri, mlflow_tracking_server, monkeypatch
):
    import mlflow

    from flows.nightly_fix import nightly_fix
    from flows.promote import promote_flow
    from tasks.flags import Flag, append_flags
    from tasks.ledger import Ledger
    from tasks.storage import open_store

    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    settings = make_settings(
        thresholds=LENIENT, store_uri=s3_prefix_uri, tracking_uri=mlflow_tracking_server.tracking_uri,
        registered_model="mend-integration",
    )  # fmt: skip
    store = open_store(settings.store_uri)
    flag = Flag.create(model_name=settings.registered_model, model_version="1", prompt="The capital of France is",
                       prediction="Paris", correction="Rome", paraphrases=("France's capital city is",),
                       reason="wrong", reporter="integration")  # fmt: skip
    append_flags(store, [flag])

    summary = nightly_fix(overrides=settings.to_json())
    assert summary.gate_passed and summary.candidate_version == "2"
    assert Ledger(store).states()[flag.flag_id].state.value == "applied"
    assert store.exists(f"runs/{summary.run_id}/snapshot/changed.safetensors")

    client = mlflow.MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    artifacts = {item.path for item in client.list_artifacts(summary.mlflow_run_id)}
    assert {"dataset", "evaluation", "gate", "quarantine"} <= artifacts
    gate_files = {item.path for item in client.list_artifacts(summary.mlflow_run_id, "gate")}
    assert {"gate/gate_result.json", "gate/edit_gate.html"} <= gate_files
    assert client.get_model_version_by_alias(settings.registered_model, "candidate").version == "2"

    promote_flow(version="2", approver="integration", approve=True, overrides=settings.to_json())
    assert client.get_model_version_by_alias(settings.registered_model, "champion").version == "2"
    assert Ledger(store).states()[flag.flag_id].state.value == "promoted"
