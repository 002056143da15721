"""The benchmark editors are trained as the fix run trains its editor, and a stale one is never reused."""

from __future__ import annotations

import dataclasses
import json

import pytest

from benchmarks.editors import RECIPE_FILE, RECIPES, RecipeMismatch, check_recipe
from editing.data.protected_sources import GATE_TEXTS, normalise, training_texts
from tasks.settings import FixSettings
from tests.paths import DATA_DIR


def test_the_fix_run_recipe_trains_as_the_fix_run_does():
    settings = FixSettings.from_env()
    train, _ = RECIPES["mend-ls-fix-run"].configs(minutes=1.0, device="cpu")
    assert train.locality_loss_weight == settings.editor_locality_weight
    assert train.general_text_loss_weight == settings.editor_general_text_weight
    assert train.general_text_every == settings.editor_general_text_every
    assert train.lr_schedule == settings.editor_lr_schedule
    assert RECIPES["mend-ls-fix-run"].group_sizes == settings.group_sizes()
    # The other recipes keep the weights their recorded editors were trained with.
    assert RECIPES["mend-ls"].configs(minutes=1.0, device="cpu")[0].locality_loss_weight == 10


def test_every_recipe_makes_valid_configs_and_the_wide_one_differs_only_in_its_groups():
    for recipe in RECIPES.values():
        train, editor = recipe.configs(minutes=1.0, device="cpu")  # validated on construction
        assert editor.aggregation == recipe.aggregation and train.group_sizes == recipe.group_sizes
    narrow, wide = RECIPES["mend-ls"].__dict__, RECIPES["mend-ls-wide"].__dict__
    assert {key for key in narrow if narrow[key] != wide[key]} == {"name", "group_sizes"}
    assert max(RECIPES["mend-ls-wide"].group_sizes) == 256
    short, _ = RECIPES["mend-ls-457"].configs(minutes=10.0, device="cpu")
    assert short.max_steps == 457 and short.group_sizes == RECIPES["mend-ls"].group_sizes
    hour, _ = RECIPES["mend-ls-wide-60"].configs(minutes=10.0, device="cpu")  # its own budget wins
    assert hour.max_minutes == 60 and short.max_minutes == 10
    wide_hour = RECIPES["mend-ls-wide-60"].__dict__
    assert {key for key in wide if wide[key] != wide_hour[key]} == {"name", "train_minutes"}
    # The hour's decayed editor is the 10-minute one given the hour and the whole train split, nothing else.
    cosine, cosine_hour = RECIPES["mend-ls-cosine"].__dict__, RECIPES["mend-ls-cosine-60"].__dict__
    differing = {key for key in cosine if cosine[key] != cosine_hour[key]}
    assert differing == {"name", "train_minutes", "train_records", "val_records"}
    assert cosine_hour["train_records"] >= 10_000 and cosine_hour["lr_schedule"] == "cosine"


def test_an_editor_trained_with_another_recipe_is_refused(tmp_path):
    recipe = RECIPES["mend-ls"]
    with pytest.raises(RecipeMismatch, match="no recorded recipe"):
        check_recipe(tmp_path, recipe)  # an editor from before recipes were recorded
    recorded = {**json.loads(json.dumps(recipe.__dict__)), "locality_weight": 1.0}
    (tmp_path / RECIPE_FILE).write_text(json.dumps(recorded))
    with pytest.raises(RecipeMismatch, match="locality_weight"):
        check_recipe(tmp_path, recipe)
    (tmp_path / RECIPE_FILE).write_text(json.dumps(json.loads(json.dumps(recipe.__dict__))))
    check_recipe(tmp_path, recipe)  # the same recipe is reused
    # Recorded before a field existed: the field's default is what it trained with.
    older = {k: v for k, v in json.loads(json.dumps(recipe.__dict__)).items() if k != "max_steps"}
    (tmp_path / RECIPE_FILE).write_text(json.dumps(older))
    check_recipe(tmp_path, recipe)
    with pytest.raises(RecipeMismatch, match="max_steps"):
        check_recipe(tmp_path, dataclasses.replace(recipe, max_steps=457))
    with pytest.raises(RecipeMismatch, match="train_minutes"):  # a 10-minute editor is not an hour's
        check_recipe(tmp_path, dataclasses.replace(recipe, train_minutes=60.0))


@pytest.mark.skipif(not (DATA_DIR / GATE_TEXTS).is_file(), reason="needs ../shared/data")
def test_general_training_texts_never_include_the_gates_perplexity_texts():
    from editing.data.records import read_texts

    texts = training_texts(DATA_DIR, 500)
    gate = {normalise(text) for text in read_texts(DATA_DIR / GATE_TEXTS)}
    assert len(texts) == 500 and not gate & {normalise(text) for text in texts}


def test_a_reused_editor_reports_the_training_it_recorded(tmp_path):
    from benchmarks.editors import recorded_training
    from editing.training.checkpoint import STATE_JSON

    assert recorded_training(tmp_path) == {}  # nothing recorded: nothing claimed
    validations = [{"step": 0, "score": 0.36}, {"step": 200, "score": 0.5}, {"step": 400, "score": 0.45}]
    trainer = {"step": 400, "best_step": 200, "stop_reason": "max_minutes", "elapsed_seconds": 800.0,
               "validations": validations}  # fmt: skip
    (tmp_path / STATE_JSON).write_text(json.dumps({"trainer": trainer, "param_groups": []}))
    summary = recorded_training(tmp_path)
    assert summary["best_validation"] == {"step": 200, "score": 0.5} and summary["steps_per_second"] == 0.5
    assert summary["validation_scores"] == [[0, 0.36], [200, 0.5], [400, 0.45]]
