"""The fix run with the MEND editor: the first run trains and registers an editor, later runs reuse it."""

from __future__ import annotations

import pytest
import torch

from tests.flows.test_nightly_fix import PROMPTS, _flag

pytestmark = pytest.mark.usefixtures("prefect_server")

# A 6-step editor on a random tiny model fixes little; this test is about the editor's life cycle.
ANY_RESULT = {"min_edit_success": 0.0, "min_paraphrase_success": 0.0, "min_locality_unchanged": 0.0,
           "min_locality_same_subject": 0.0,
              "max_perplexity_increase": 1e9, "min_retention": 0.0}  # fmt: skip


def _editor_versions(settings) -> list:
    import mlflow

    from tasks.editor_registry import EDITOR_MODEL_NAME

    client = mlflow.MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    return client.search_model_versions(f"name='{EDITOR_MODEL_NAME}'")


def test_first_mend_fix_trains_and_registers_the_editor_and_the_next_reuses_it(make_settings):
    import mlflow

    from flows.nightly_fix import nightly_fix

    settings = make_settings(editor="mend", thresholds=ANY_RESULT)
    assert _editor_versions(settings) == []
    _flag(settings, *PROMPTS[0])
    first = nightly_fix(overrides=settings.to_json())
    assert first.editor_uri == "models:/mend-editor/1" and first.edits_applied == 1
    assert first.candidate_version == "2"
    (editor,) = _editor_versions(settings)
    training = mlflow.MlflowClient(tracking_uri=settings.tracking_uri).get_run(editor.run_id)
    assert training.data.params["group_sizes"] == str(list(settings.group_sizes()))
    assert training.data.params["editor_aggregation"] == settings.editor_aggregation == "least_squares"
    assert float(training.data.params["general_text_loss_weight"]) == settings.editor_general_text_weight
    assert float(training.data.params["locality_loss_weight"]) == settings.editor_locality_weight
    assert training.data.params["editor_solve_keys"] == "network"
    fix_params = (
        mlflow.MlflowClient(tracking_uri=settings.tracking_uri).get_run(first.mlflow_run_id).data.params
    )
    assert fix_params["edit_substitutes"] == "8"  # same-wording neighbours are on by default
    assert fix_params["edit_subject_free"] == str(settings.edit_subject_free)
    assert float(fix_params["edit_substitute_min_probability"]) == settings.edit_substitute_min_probability
    assert fix_params["edit_siblings"] == str(settings.edit_siblings)
    assert float(fix_params["edit_max_disturbance"]) == settings.edit_max_disturbance > 0  # so is the cap
    # The update's diagnostics sit beside the candidate and in the run: each weight's disturbance vs the cap.
    from tasks.apply import update_key

    update = settings.open_store().read_json(update_key(first.run_id))
    assert update["max_disturbance"] == settings.edit_max_disturbance and update["editor"] == "mend"
    assert any(key.startswith("disturbance/") for key in update["diagnostics"])
    logged = mlflow.MlflowClient(tracking_uri=settings.tracking_uri).list_artifacts(
        first.mlflow_run_id, "update"
    )
    assert [artifact.path for artifact in logged] == ["update/update.json"]

    _flag(settings, *PROMPTS[1])
    # The second night also protects each edit's nearest known facts (a random model knows none of the
    # bank's facts, so this checks the plumbing; tests/editing/test_neighbours.py checks the effect).
    guarded = settings.with_changes(edit_neighbours=4, neighbour_bank_records=20)
    second = nightly_fix(overrides=guarded.to_json())
    assert second.editor_uri == first.editor_uri and second.candidate_version == "3"
    assert len(_editor_versions(settings)) == 1  # found by the base model's fingerprint, not retrained
    params = mlflow.MlflowClient(tracking_uri=settings.tracking_uri).get_run(second.mlflow_run_id).data.params
    assert params["edit_neighbours"] == "4"


THIRD = ("The mother tongue of Danielle Darrieux is", "English", (), "Danielle Darrieux")


def _ledger_weights(settings, version: str, records, *, capped: bool = True) -> tuple[dict, dict]:
    """(the candidate's edited weights, base + one edit of ``records`` computed directly, under the
    settings' disturbance cap unless not ``capped``)."""
    import math

    from editing.core.models import load_model
    from editing.editors import build_editor
    from tasks.editor import editor_checkpoint
    from tasks.models import load_version

    candidate = load_version(settings, version)
    base = load_model(settings.base_model)
    editor = build_editor("mend", base, editor_path=editor_checkpoint(settings, "models:/mend-editor/1"))
    editor = editor.with_disturbance_cap(settings.edit_max_disturbance if capped else math.inf, base.model)
    expected = editor.edit(base.model, base.tokenizer, records)
    parameters = dict(base.model.named_parameters())
    direct = {name: parameters[name] + delta for name, delta in expected.deltas.items()}
    actual = dict(candidate.loaded.model.named_parameters())
    return {name: actual[name] for name in direct}, direct


def test_candidates_are_the_base_plus_one_solve_of_the_whole_ledger_and_follow_a_rollback(make_settings):
    from editing.data.records import EditRecord
    from flows.nightly_fix import nightly_fix
    from flows.promote import promote_flow, rollback_flow
    from tasks.edit_ledger import manifest_key
    from tasks.models import load_version
    from tasks.storage import open_store

    # A cap tight enough to bind on the tiny model (its 6-step editor disturbs about 1e-9): the ledger is
    # solved under it (checked below).
    settings = make_settings(editor="mend", thresholds=ANY_RESULT, edit_max_disturbance=1e-10)
    overrides = settings.to_json()
    flags = [_flag(settings, *PROMPTS[0])]
    first = nightly_fix(overrides=overrides)
    promote_flow(version=first.candidate_version, approver="alice", approve=True, overrides=overrides)
    flags.append(_flag(settings, *PROMPTS[1]))
    second = nightly_fix(overrides=overrides)
    assert second.summary["retained_edits"] == 1  # night one's edit is checked for retention
    records = [EditRecord(f.flag_id, f.prompt, f.correction) for f in flags]
    metadata = load_version(settings, second.candidate_version).metadata
    assert metadata.ledger_flag_ids == (flags[0].flag_id, flags[1].flag_id)
    actual, direct = _ledger_weights(settings, second.candidate_version, records)
    for name, weight in direct.items():
        torch.testing.assert_close(actual[name], weight, rtol=1e-4, atol=1e-6)
    _, uncapped = _ledger_weights(settings, second.candidate_version, records, capped=False)
    assert any(not torch.equal(uncapped[name], weight) for name, weight in direct.items())  # it binds
    # Night one's rows were reused from its run, not recomputed.
    store = open_store(settings.store_uri)
    manifest = store.read_json(manifest_key(metadata.result_fingerprint))
    assert manifest["flags"][flags[0].flag_id] == f"edit-rows/{first.run_id}.safetensors"

    promote_flow(version=second.candidate_version, approver="alice", approve=True, overrides=overrides)
    assert rollback_flow(overrides=overrides) == first.candidate_version
    flags.append(_flag(settings, *THIRD))
    third = nightly_fix(overrides=overrides)
    assert third.champion_version == first.candidate_version and third.summary["retained_edits"] == 1
    metadata = load_version(settings, third.candidate_version).metadata
    assert metadata.ledger_flag_ids == (flags[0].flag_id, flags[2].flag_id)  # the rolled-back edit is gone
    actual, direct = _ledger_weights(settings, third.candidate_version, [records[0], EditRecord(
        flags[2].flag_id, flags[2].prompt, flags[2].correction)])  # fmt: skip
    for name, weight in direct.items():
        torch.testing.assert_close(actual[name], weight, rtol=1e-4, atol=1e-6)


def test_general_texts_for_training_leave_out_the_gates_reference_texts(make_settings):
    from editing.data.protected_sources import GENERAL_TEXTS
    from editing.data.records import read_texts
    from tasks.editor import general_texts
    from tasks.evaluate import REFERENCE_TEXTS

    settings = make_settings()
    texts = general_texts(settings, 2_000)
    reference = set(read_texts(settings.data_file(REFERENCE_TEXTS)))
    assert len(texts) == 2_000 and not reference & set(texts)
    # ME-PPL_1k is drawn from ME-PPL: without the exclusion, training would see the scored texts.
    assert reference & set(read_texts(settings.data_file(GENERAL_TEXTS)))
