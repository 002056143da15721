"""Editor settings of the pipeline: aggregation and training group sizes are validated up front."""

from __future__ import annotations

import pytest

from tasks.settings import FixSettings, SettingsError


def test_group_sizes_and_aggregation_are_parsed_and_checked(monkeypatch):
    monkeypatch.setenv("MEND_EDITOR_GROUP_SIZES", "1,4,16")
    settings = FixSettings.from_env()
    assert settings.group_sizes() == (1, 4, 16) and settings.editor_aggregation == "least_squares"
    with pytest.raises(SettingsError, match="MEND_EDITOR_GROUP_SIZES"):
        FixSettings.from_env(editor_group_sizes="1,zero")
    with pytest.raises(SettingsError, match="MEND_EDITOR_AGGREGATION"):
        FixSettings.from_env(editor_aggregation="average")
    with pytest.raises(SettingsError, match="MEND_EDITOR_SAME_RELATION"):
        FixSettings.from_env(editor_same_relation=1.5)


def test_learning_rate_schedule_is_read_and_checked(monkeypatch):
    assert FixSettings.from_env().editor_lr_schedule == "cosine"  # the fix run's recipe
    monkeypatch.setenv("MEND_EDITOR_LR_SCHEDULE", "constant")
    assert FixSettings.from_env().editor_lr_schedule == "constant"
    with pytest.raises(SettingsError, match="MEND_EDITOR_LR_SCHEDULE"):
        FixSettings.from_env(editor_lr_schedule="step")


def test_edit_time_solver_multipliers_are_read_and_must_be_usable(monkeypatch):
    monkeypatch.setenv("MEND_EDIT_PROTECT_MULTIPLIER", "64")
    settings = FixSettings.from_env()
    assert settings.edit_protect_multiplier == 64 and settings.edit_ridge_multiplier > 0
    with pytest.raises(SettingsError, match="edit_ridge_multiplier"):
        FixSettings.from_env(edit_ridge_multiplier=0.0)
    with pytest.raises(SettingsError, match="edit_protect_multiplier"):
        FixSettings.from_env(edit_protect_multiplier=float("nan"))


def test_the_disturbance_cap_is_on_by_default_read_and_checked(monkeypatch):
    from tasks.settings import DEFAULT_EDIT_MAX_DISTURBANCE

    assert FixSettings.from_env().edit_max_disturbance == DEFAULT_EDIT_MAX_DISTURBANCE > 0
    monkeypatch.setenv("MEND_EDIT_MAX_DISTURBANCE", "0")  # 0 lifts the bound
    assert FixSettings.from_env().edit_max_disturbance == 0
    with pytest.raises(SettingsError, match="edit_max_disturbance"):
        FixSettings.from_env(edit_max_disturbance=-0.1)


def test_subject_free_wordings_are_read_and_bounded_by_the_fillers(monkeypatch):
    from editing.mend.substitutes import SUBJECT_FREE_FILLERS
    from tasks.settings import DEFAULT_EDIT_SUBJECT_FREE

    assert FixSettings.from_env().edit_subject_free == DEFAULT_EDIT_SUBJECT_FREE
    monkeypatch.setenv("MEND_EDIT_SUBJECT_FREE", "3")
    assert FixSettings.from_env().edit_subject_free == 3
    for bad in (-1, len(SUBJECT_FREE_FILLERS) + 1):
        with pytest.raises(SettingsError, match="edit_subject_free"):
            FixSettings.from_env(edit_subject_free=bad)


def test_same_wording_neighbour_confidence_is_read_and_bounded(monkeypatch):
    from tasks.settings import DEFAULT_EDIT_SUBSTITUTE_MIN_PROBABILITY

    assert FixSettings.from_env().edit_substitute_min_probability == DEFAULT_EDIT_SUBSTITUTE_MIN_PROBABILITY
    monkeypatch.setenv("MEND_EDIT_SUBSTITUTE_MIN_PROBABILITY", "0")
    assert FixSettings.from_env().edit_substitute_min_probability == 0
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(SettingsError, match="edit_substitute_min_probability"):
            FixSettings.from_env(edit_substitute_min_probability=bad)


def test_sibling_subjects_are_read_and_must_not_be_negative(monkeypatch):
    from tasks.settings import DEFAULT_EDIT_SIBLINGS

    assert FixSettings.from_env().edit_siblings == DEFAULT_EDIT_SIBLINGS == 0
    monkeypatch.setenv("MEND_EDIT_SIBLINGS", "3")
    assert FixSettings.from_env().edit_siblings == 3
    with pytest.raises(SettingsError, match="edit_siblings"):
        FixSettings.from_env(edit_siblings=-1)
