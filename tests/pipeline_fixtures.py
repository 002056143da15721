"""Pipeline fixtures: a real (temporary) Prefect server and fresh settings per test (own store, own
SQLite MLflow, the tiny base model saved to disk). Registered as a plugin by tests/conftest.py."""

from __future__ import annotations

import json

import pytest

from tests.paths import DATA_DIR

LENIENT = {"min_edit_success": 0.5, "min_paraphrase_success": 0.0, "min_locality_unchanged": 0.0,
           "min_locality_same_subject": 0.0,
           "max_perplexity_increase": 10.0, "min_retention": 0.0}  # fmt: skip


@pytest.fixture(scope="session")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=300):
        yield


@pytest.fixture
def make_settings(tmp_path, tiny_base_dir, monkeypatch):
    """Settings for one isolated pipeline: ``make_settings(editor=..., thresholds=...)``."""
    from tasks.settings import FixSettings

    monkeypatch.setenv("MEND_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MEND_CACHE_DIR", str(tmp_path / "cache"))  # protected keys of the tiny model

    def build(*, thresholds: dict | None = None, **changes) -> FixSettings:
        thresholds_path = None
        if thresholds is not None:
            thresholds_path = tmp_path / "thresholds.json"
            thresholds_path.write_text(json.dumps(thresholds))
        values = {
            "store_uri": str(tmp_path / "store"),
            "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "base_model": str(tiny_base_dir),
            "editor": "ft-kl",
            "ft_steps": 20,
            "ft_lr": 1e-2,  # a random tiny model needs big steps to learn a new target
            "data_dir": str(DATA_DIR),
            "locality_pool_prompts": 20,
            "reference_texts": 8,
            "editor_train_minutes": 1.0,
            "editor_train_steps": 6,
            "editor_train_records": 40,
            "protected_texts": 16,
            "protected_facts": 20,
            "thresholds_path": str(thresholds_path) if thresholds_path else None,
        }
        return FixSettings.from_env(**{**values, **changes})

    return build
