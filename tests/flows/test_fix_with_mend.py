"""The fix run with the MEND editor: the first run trains and registers an editor, later runs reuse it."""

from __future__ import annotations

import pytest

from tests.flows.test_nightly_fix import PROMPTS, _flag

pytestmark = pytest.mark.usefixtures("prefect_server")

# A 6-step editor on a random tiny model fixes little; this test is about the editor's life cycle.
ANY_RESULT = {"min_edit_success": 0.0, "min_paraphrase_success": 0.0, "min_locality_unchanged": 0.0,
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
    assert training.data.params["edits_per_update"] == str(settings.editor_edits_per_update)
    assert float(training.data.params["general_text_loss_weight"]) == settings.editor_general_text_weight > 0
    assert float(training.data.params["locality_loss_weight"]) == settings.editor_locality_weight
    assert float(training.data.params["locality_loss_weight"]) == settings.editor_locality_weight

    _flag(settings, *PROMPTS[1])
    second = nightly_fix(overrides=settings.to_json())
    assert second.editor_uri == first.editor_uri and second.candidate_version == "3"
    assert len(_editor_versions(settings)) == 1  # found by the base model's fingerprint, not retrained


def test_general_texts_for_training_leave_out_the_gates_reference_texts(make_settings):
    from editing.data.records import read_texts
    from tasks.editor import GENERAL_TEXTS, general_texts
    from tasks.evaluate import REFERENCE_TEXTS

    settings = make_settings()
    texts = general_texts(settings, 2_000)
    reference = set(read_texts(settings.data_file(REFERENCE_TEXTS)))
    assert len(texts) == 2_000 and not reference & set(texts)
    # ME-PPL_1k is drawn from ME-PPL: without the exclusion, training would see the scored texts.
    assert reference & set(read_texts(settings.data_file(GENERAL_TEXTS)))
