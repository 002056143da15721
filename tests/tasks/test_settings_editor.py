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
