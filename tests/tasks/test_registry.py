"""Registry logic against a real MLflow (SQLite store in tmp_path): base, gated candidates, promotion."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import pytest
import torch
from safetensors.torch import save_file

from editing.core.models import load_model
from tasks import editor_registry, registry
from tasks.champion import PromotionRefused, approve, promote, rollback
from tasks.mlflow_flavor import load_registered, load_registered_model, log_snapshot_model
from tasks.registry import CANDIDATE, CHAMPION, GateFailedError, RegistryError, Tag
from tasks.tracking import fix_run
from tests.integration.mlflow_fixtures import edit_and_snapshot, logits_of

# Fixtures local_tracking_uri and tiny_base_dir.

MODEL = "mend-test-model"


@pytest.fixture
def base(tiny_base_dir):
    """A fresh load of the on-disk tiny base: tests may edit it."""
    return load_model(tiny_base_dir)


@pytest.fixture
def registered_base(local_tracking_uri, base) -> str:
    return registry.ensure_base_registered(MODEL, base.source, base.fingerprint)


def register(snapshot_dir: Path, run_key: str, *, derived_from: str = "1", gate_passed: bool = True) -> str:
    with fix_run(run_name=run_key) as run_id:
        return registry.register_candidate(
            MODEL,
            snapshot_dir,
            run_id=run_id,
            gate_passed=gate_passed,
            flag_ids=["flag-1", "flag-2"],
            run_key=run_key,
            derived_from_version=derived_from,
        )


def test_base_registration_is_idempotent_and_champion(registered_base, base):
    assert registered_base == "1"
    assert registry.champion_version(MODEL) == "1"
    assert registry.ensure_base_registered(MODEL, base.source, base.fingerprint) == "1"
    versions = mlflow.MlflowClient().search_model_versions(f"name = '{MODEL}'")
    assert [str(version.version) for version in versions] == ["1"]
    assert versions[0].tags[Tag.ROLE] == "base"
    # The base is registered as an empty snapshot: it loads back as the base model itself.
    loaded = load_registered_model(MODEL, CHAMPION)
    assert loaded.fingerprint == base.fingerprint
    assert torch.equal(logits_of(loaded.model), logits_of(base.model))


def test_a_different_base_model_is_refused(registered_base, base):
    with pytest.raises(RegistryError, match="another registered model name"):
        registry.ensure_base_registered(MODEL, base.source, "f" * 64)


def test_gate_failed_candidate_is_never_registered(registered_base, base, tmp_path):
    snapshot_dir, _ = edit_and_snapshot(base, tmp_path / "snap", derived_from_version="1")
    with pytest.raises(GateFailedError, match="gate failed"):
        register(snapshot_dir, "night-1", gate_passed=False)
    assert registry.find_version_by_run_key(MODEL, "night-1") is None
    assert len(mlflow.MlflowClient().search_model_versions(f"name = '{MODEL}'")) == 1


def test_candidate_is_registered_once_per_run_key(registered_base, base, tmp_path):
    snapshot_dir, _ = edit_and_snapshot(base, tmp_path / "snap", derived_from_version="1")
    assert registry.find_version_by_run_key(MODEL, "night-1") is None
    version = register(snapshot_dir, "night-1")
    assert version == "2"
    # A rerun after a crash between registration and the ledger update reuses the version.
    assert register(snapshot_dir, "night-1") == "2"
    assert registry.find_version_by_run_key(MODEL, "night-1") == "2"
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias(MODEL, CANDIDATE).version) == "2"
    tags = client.get_model_version(MODEL, "2").tags
    assert tags[Tag.GATE_PASSED] == "true"
    assert json.loads(tags[Tag.FLAG_IDS]) == ["flag-1", "flag-2"]
    assert tags[Tag.RUN_KEY] == "night-1"
    assert tags[Tag.DERIVED_FROM] == "1"
    assert tags[Tag.RUN_ID] == client.get_model_version(MODEL, "2").run_id
    assert registry.champion_version(MODEL) == "1"  # registering never promotes


def test_promotion_needs_approval_then_rolls_back(registered_base, base, tmp_path):
    snapshot_dir, _ = edit_and_snapshot(base, tmp_path / "snap", derived_from_version="1")
    version = register(snapshot_dir, "night-1")
    with pytest.raises(PromotionRefused, match="not approved"):
        promote(MODEL, version)
    assert registry.champion_version(MODEL) == "1"
    approve(MODEL, version, "alice")
    record = promote(MODEL, version, approver="bob")
    assert (record.version, record.previous_champion, record.promoted_by) == ("2", "1", "bob")
    assert registry.champion_version(MODEL) == "2"
    assert promote(MODEL, version) == record  # promoting the champion again changes nothing
    tags = mlflow.MlflowClient().get_model_version(MODEL, version).tags
    assert (tags[Tag.APPROVED_BY], tags[Tag.PREVIOUS_CHAMPION]) == ("alice", "1")
    with pytest.raises(mlflow.exceptions.MlflowException):  # the candidate alias went with promotion
        mlflow.MlflowClient().get_model_version_by_alias(MODEL, CANDIDATE)
    assert rollback(MODEL) == "1"
    assert registry.champion_version(MODEL) == "1"
    with pytest.raises(RegistryError, match="no previous champion"):
        rollback(MODEL)


def test_gate_failed_version_cannot_be_approved_or_promoted(registered_base, base, tmp_path):
    snapshot_dir, _ = edit_and_snapshot(base, tmp_path / "snap", derived_from_version="1")
    register(snapshot_dir, "night-1")
    client = mlflow.MlflowClient()
    # A version registered by hand, outside register_candidate, whose gate failed.
    with fix_run(run_name="manual") as run_id:
        logged = log_snapshot_model(snapshot_dir, run_id=run_id)
    tags = {Tag.GATE_PASSED: "false"}
    failed = client.create_model_version(MODEL, logged.model_uri, run_id, tags=tags, model_id=logged.model_id)
    failed = str(failed.version)
    with pytest.raises(PromotionRefused, match="cannot approve"):
        approve(MODEL, failed, "alice")
    client.set_model_version_tag(MODEL, failed, Tag.APPROVED_BY, "alice")  # approved in the UI anyway
    with pytest.raises(PromotionRefused, match="gate did not pass"):
        promote(MODEL, failed)
    assert registry.champion_version(MODEL) == "1"


def test_registered_candidate_loads_as_the_edited_model(registered_base, base, tmp_path):
    snapshot_dir, edited_logits = edit_and_snapshot(base, tmp_path / "snap", derived_from_version="1")
    version = register(snapshot_dir, "night-1")
    state = load_registered(MODEL, CANDIDATE)
    assert state.version == version
    assert torch.equal(logits_of(state.loaded.model), edited_logits)
    assert sorted(state.base_values) == list(state.metadata.tensor_names)
    # The model artifact holds the snapshot, never the base weights.
    model_dir = Path(
        mlflow.artifacts.download_artifacts(f"models:/{MODEL}/{version}", dst_path=str(tmp_path / "dl"))
    )
    files = sorted(path.name for path in model_dir.rglob("*") if path.is_file())
    assert "changed.safetensors" in files and "model.safetensors" not in files
    assert not any(name.endswith(".pkl") for name in files)
    pyfunc_model = mlflow.pyfunc.load_model(f"models:/{MODEL}@{CANDIDATE}")
    assert torch.equal(logits_of(pyfunc_model.unwrap_python_model().loaded.model), edited_logits)
    completions = pyfunc_model.predict(["The capital of France is"], params={"max_new_tokens": 3})
    assert len(completions) == 1 and isinstance(completions[0], str)


def test_base_location_can_be_overridden(registered_base, base, tiny_base_dir, tmp_path, monkeypatch):
    snapshot_dir, edited_logits = edit_and_snapshot(base, tmp_path / "snap", derived_from_version="1")
    version = register(snapshot_dir, "night-1")
    moved = shutil.copytree(tiny_base_dir, tmp_path / "moved-base")
    monkeypatch.setenv("MEND_BASE_MODEL_PATH", str(moved))
    loaded = load_registered_model(MODEL, version)
    assert loaded.source == str(moved)
    assert torch.equal(logits_of(loaded.model), edited_logits)


def test_snapshot_over_another_base_is_refused(registered_base, tiny_gpt2, tmp_path):
    other = load_model(_saved(tiny_gpt2, tmp_path / "gpt2"))
    snapshot_dir, _ = edit_and_snapshot(other, tmp_path / "snap", derived_from_version="1")
    with pytest.raises(RegistryError, match="but mend-test-model's base"):
        register(snapshot_dir, "night-1")


def _saved(loaded, directory: Path) -> Path:
    import copy

    copy.deepcopy(loaded.model).save_pretrained(directory)
    loaded.tokenizer.save_pretrained(directory)
    return directory


def _checkpoint(directory: Path, value: float) -> Path:
    directory.mkdir(parents=True)
    save_file({"weight": torch.full((2, 2), value)}, str(directory / "editor.safetensors"))
    (directory / "config.json").write_text(json.dumps({"rank": 2}))
    return directory


def test_editor_registration_and_lookup(local_tracking_uri, tmp_path):
    base_fingerprint, other_fingerprint = "a" * 64, "b" * 64
    with fix_run(run_name="train-1") as run_id:
        first = editor_registry.register_editor(
            _checkpoint(tmp_path / "e1", 1.0), base_fingerprint, {"es": 0.9}, run_id
        )
    with fix_run(run_name="train-2") as run_id:
        second = editor_registry.register_editor(
            _checkpoint(tmp_path / "e2", 2.0), base_fingerprint, {"es": 0.95}, run_id
        )
    with fix_run(run_name="train-3") as run_id:
        editor_registry.register_editor(_checkpoint(tmp_path / "e3", 3.0), other_fingerprint, {}, run_id)
    assert (first, second) == ("1", "2")
    found = editor_registry.find_editor(base_fingerprint)
    assert found is not None and found[0] == "2"
    assert sorted(path.name for path in found[1].iterdir()) == ["config.json", "editor.safetensors"]
    assert (found[1] / "editor.safetensors").read_bytes() == (
        tmp_path / "e2" / "editor.safetensors"
    ).read_bytes()
    assert editor_registry.find_editor(base_fingerprint) == found  # second lookup reuses the local copy
    tags = mlflow.MlflowClient().get_model_version(editor_registry.EDITOR_MODEL_NAME, "2").tags
    assert tags["metric.es"] == "0.95"
    assert editor_registry.find_editor("c" * 64) is None


def test_pickled_editor_checkpoint_is_refused(local_tracking_uri, tmp_path):
    directory = _checkpoint(tmp_path / "e1", 1.0)
    (directory / "optimizer.pt").write_bytes(b"pickle")
    with fix_run(run_name="train") as run_id, pytest.raises(ValueError, match=r"optimizer\.pt"):
        editor_registry.register_editor(directory, "a" * 64, {}, run_id)
