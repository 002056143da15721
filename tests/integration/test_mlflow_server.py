"""The registry workflow against a real ``mlflow server`` on PostgreSQL with proxied artifacts."""

from __future__ import annotations

import json
import logging
import time

import mlflow
import pytest
import torch
from safetensors.torch import save_file

from editing.core.models import load_model
from tasks import editor_registry, registry
from tasks.champion import PromotionRefused, approve, promote, rollback
from tasks.mlflow_flavor import load_registered_model, log_snapshot_model
from tasks.registry import CANDIDATE, CHAMPION, GateFailedError, RegistryError, Tag
from tasks.tracking import fix_run, log_metrics
from tests.integration.mlflow_fixtures import edit_and_snapshot, logits_of
from tests.integration.mlflow_server import PG_ADMIN_DATABASE, PG_HOST, PG_PORT, PG_USER

# Fixtures mlflow_tracking_server, server_tracking_uri and tiny_base_dir.

pytestmark = pytest.mark.integration
LOGGER = logging.getLogger(__name__)
MODEL = "mend-integration-model"


def _postgres_experiment_names(database: str) -> set[str]:
    import psycopg2

    connection = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=database)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT name FROM experiments")
            return {row[0] for row in cursor.fetchall()}
    finally:
        connection.close()


def test_server_stores_runs_in_postgres(mlflow_tracking_server, server_tracking_uri, record_property):
    record_property("mlflow_server_start_seconds", round(mlflow_tracking_server.start_seconds, 1))
    LOGGER.info("mlflow server started in %.1fs", mlflow_tracking_server.start_seconds)
    assert server_tracking_uri.startswith("http://127.0.0.1:")
    assert mlflow_tracking_server.database != PG_ADMIN_DATABASE
    with fix_run("integration-tracking", run_name="probe") as run_id:
        log_metrics({"probe": 1.0})
    assert "integration-tracking" in _postgres_experiment_names(mlflow_tracking_server.database)
    # Run artifacts go through the server's proxy into its artifact directory.
    assert mlflow.MlflowClient().get_run(run_id).info.artifact_uri.startswith("mlflow-artifacts:")


def _register(snapshot_dir, run_key, *, gate_passed=True):
    with fix_run("integration-fix", run_name=run_key) as run_id:
        return registry.register_candidate(
            MODEL,
            snapshot_dir,
            run_id=run_id,
            gate_passed=gate_passed,
            flag_ids=["f-1"],
            run_key=run_key,
            derived_from_version="1",
        )


def test_gated_promotion_workflow(server_tracking_uri, tiny_base_dir, tmp_path, record_property):
    base = load_model(tiny_base_dir)
    base_logits = logits_of(base.model)
    assert registry.ensure_base_registered(MODEL, base.source, base.fingerprint) == "1"
    assert registry.champion_version(MODEL) == "1"

    snapshot_dir, edited_logits = edit_and_snapshot(base, tmp_path / "snap", derived_from_version="1")
    with pytest.raises(GateFailedError):
        _register(snapshot_dir, "night-0", gate_passed=False)
    started = time.monotonic()
    version = _register(snapshot_dir, "night-1")
    record_property("candidate_registration_seconds", round(time.monotonic() - started, 2))
    LOGGER.info("tiny-model candidate registered in %.2fs", time.monotonic() - started)
    assert version == "2"
    assert _register(snapshot_dir, "night-1") == "2"  # rerun of the same run key
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias(MODEL, CANDIDATE).version) == "2"

    with pytest.raises(PromotionRefused, match="not approved"):
        promote(MODEL, version)
    # A version registered by hand, outside register_candidate, whose gate failed but was approved.
    with fix_run("integration-fix", run_name="manual") as run_id:
        logged = log_snapshot_model(snapshot_dir, run_id=run_id)
    tags = {Tag.GATE_PASSED: "false", Tag.APPROVED_BY: "mallory"}
    failed = client.create_model_version(MODEL, logged.model_uri, run_id, tags=tags, model_id=logged.model_id)
    with pytest.raises(PromotionRefused, match="gate did not pass"):
        promote(MODEL, failed.version)
    assert registry.champion_version(MODEL) == "1"

    approve(MODEL, version, "alice")
    record = promote(MODEL, version)
    assert (record.previous_champion, record.promoted_by) == ("1", "alice")
    assert registry.champion_version(MODEL) == "2"

    pyfunc_model = mlflow.pyfunc.load_model(f"models:/{MODEL}@{CHAMPION}")
    assert torch.equal(logits_of(pyfunc_model.unwrap_python_model().loaded.model), edited_logits)
    assert len(pyfunc_model.predict(["Paris is"], params={"max_new_tokens": 2})) == 1
    champion = load_registered_model(MODEL, CHAMPION)
    assert torch.equal(logits_of(champion.model), edited_logits)

    assert rollback(MODEL) == "1"
    assert torch.equal(logits_of(load_registered_model(MODEL, CHAMPION).model), base_logits)
    with pytest.raises(RegistryError, match="no previous champion"):
        rollback(MODEL)


def test_editor_round_trip_through_the_server(server_tracking_uri, tmp_path):
    checkpoint = tmp_path / "editor"
    checkpoint.mkdir()
    save_file({"weight": torch.arange(4.0)}, str(checkpoint / "editor.safetensors"))
    (checkpoint / "config.json").write_text(json.dumps({"rank": 4}))
    fingerprint = "e" * 64
    with fix_run("integration-train", run_name="train") as run_id:
        version = editor_registry.register_editor(checkpoint, fingerprint, {"edit_success": 0.9}, run_id)
    found = editor_registry.find_editor(fingerprint)
    assert found is not None and found[0] == version
    assert (found[1] / "editor.safetensors").read_bytes() == (checkpoint / "editor.safetensors").read_bytes()
