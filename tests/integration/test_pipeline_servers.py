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


def test_s3_settings_can_come_from_a_prefect_secret_block(
    make_settings, s3_server, s3_prefix_uri, monkeypatch
):
    from prefect.blocks.system import Secret

    for name in ("MEND_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    Secret(value={"endpoint_url": s3_server.endpoint_url, "access_key_id": s3_server.access_key_id,
                  "secret_access_key": s3_server.secret_access_key}).save("mend-s3-test", overwrite=True)  # fmt: skip
    settings = make_settings(store_uri=s3_prefix_uri, s3_block="mend-s3-test")
    store = settings.open_store()
    store.write_text("probe.txt", "hello")
    assert store.read_text("probe.txt") == "hello" and store.url("probe.txt").startswith("s3://")
