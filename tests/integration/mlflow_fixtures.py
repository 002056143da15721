"""MLflow fixtures and helpers: a real tracking server on PostgreSQL, local SQLite stores, a tiny base model.

Import the fixtures into a conftest (or a test module) to use them. Creating an MLflow database runs
its migrations, which takes seconds, so the SQLite store is migrated once per session and copied for
each test, and the server is started once per session.

PYTEST_DONT_REWRITE: test modules import helpers from here before registering it as a plugin.
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from editing.core.apply import EditResult
from editing.core.models import LoadedModel, fingerprint
from editing.core.snapshot import SnapshotMetadata, changed_tensors, save_snapshot
from tests.integration.mlflow_server import MlflowServer, mlflow_server


@pytest.fixture(scope="session")
def mlflow_tracking_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """One MLflow server on a fresh PostgreSQL database for the whole session."""
    with mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as server:
        yield server


def _use_tracking(uri: str, home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Point the pipeline at ``uri`` for one test, and leave MLflow's global state as it was after."""
    import mlflow

    from tasks.tracking import configure_tracking

    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(name, raising=False)  # restored by monkeypatch after the test
    monkeypatch.setenv("MEND_MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MEND_HOME", str(home))
    yield configure_tracking()
    while mlflow.active_run() is not None:  # a failed test may leave a run open
        mlflow.end_run("FAILED")
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


@pytest.fixture
def server_tracking_uri(
    mlflow_tracking_server: MlflowServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """The session's MLflow server as this test's tracking and registry URI."""
    yield from _use_tracking(mlflow_tracking_server.tracking_uri, tmp_path / "mend-home", monkeypatch)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite database with its schema created, to copy for each test."""
    import mlflow

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def local_tracking_uri(
    sqlite_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A fresh SQLite tracking store (with artifacts beside it) in this test's tmp_path."""
    database = tmp_path / "mlflow" / "mlflow.db"
    database.parent.mkdir()
    shutil.copyfile(sqlite_template, database)
    yield from _use_tracking(f"sqlite:///{database}", tmp_path / "mend-home", monkeypatch)


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory: pytest.TempPathFactory, tiny_llama: LoadedModel) -> Path:
    """The tiny Llama saved as a model directory, so it can be loaded by location like a real base."""
    directory = tmp_path_factory.mktemp("base") / "tiny-llama"
    # save_pretrained writes into the model's config; a copy keeps the shared fixture's fingerprint.
    copy.deepcopy(tiny_llama.model).save_pretrained(directory)
    tiny_llama.tokenizer.save_pretrained(directory)
    return directory


def logits_of(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([[3, 4, 5, 6, 7]])).logits


def edit_and_snapshot(
    loaded: LoadedModel, directory: Path, *, derived_from_version: str, seed: int = 0
) -> tuple[Path, torch.Tensor]:
    """Edit ``loaded`` in place (random preset-weight deltas) and snapshot it; returns (dir, new logits)."""
    base_state = {name: tensor.clone() for name, tensor in loaded.model.state_dict().items()}
    generator = torch.Generator().manual_seed(seed)
    names = loaded.preset.weight_names(len(loaded.model.get_submodule(loaded.preset.blocks)))
    parameters = dict(loaded.model.named_parameters())
    deltas = {name: 0.05 * torch.randn(parameters[name].shape, generator=generator) for name in names}
    EditResult(deltas).apply(loaded.model)
    metadata = SnapshotMetadata(
        base_fingerprint=loaded.fingerprint,
        result_fingerprint=fingerprint(loaded.model),
        base_model_source=loaded.source,
        editor="test-random",
        derived_from_version=derived_from_version,
        flag_ids=("flag-1", "flag-2"),
    )
    return save_snapshot(directory, changed_tensors(base_state, loaded.model), metadata), logits_of(
        loaded.model
    )
