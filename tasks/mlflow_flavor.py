"""Edited models as MLflow pyfunc models whose only artifact is a changed-tensors snapshot.

A registered version holds ``artifacts/snapshot`` (see ``editing.core.snapshot``), not the base weights.
Loading it (``mlflow.pyfunc.load_model`` or ``load_registered_model``) loads the base model from the
location recorded in the snapshot, or from ``$MEND_BASE_MODEL_PATH``, reconstitutes the edited model and
verifies its checksum and fingerprint.

The model is logged as "models from code": MLflow stores a three-line Python file naming
``MendSnapshotModel`` instead of a pickled object, because nothing in this project pickles. Loading
therefore needs the ``mend-fix`` package installed, as does serving.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import torch
from mlflow.models import Model, ModelSignature
from mlflow.pyfunc import PythonModel
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from editing.core.models import LoadedModel, load_model
from editing.core.snapshot import SnapshotMetadata, read_snapshot_metadata, reconstitute
from tasks.registry import resolve_version

LOGGER = logging.getLogger(__name__)

SNAPSHOT_ARTIFACT = "snapshot"
BASE_MODEL_PATH_ENV = "MEND_BASE_MODEL_PATH"
DEFAULT_MAX_NEW_TOKENS = 32
_MAX_NEW_TOKENS_LIMIT = 1024
# Requirements recorded with the model. Listing them stops MLflow from inferring them, which would load
# the model and may reach the network.
_REQUIREMENTS = ("mlflow", "torch", "transformers", "safetensors", "tokenizers", "pandas", "numpy", "pyyaml")
_MODEL_CODE = '''"""MLflow models-from-code entry point for MEND snapshot models (written by tasks.mlflow_flavor)."""

from mlflow.models import set_model

from tasks.mlflow_flavor import MendSnapshotModel

set_model(MendSnapshotModel())
'''


def _signature() -> ModelSignature:
    return ModelSignature(
        inputs=Schema([ColSpec("string")]),
        outputs=Schema([ColSpec("string", "completion")]),
        params=ParamSchema([ParamSpec("max_new_tokens", "long", DEFAULT_MAX_NEW_TOKENS)]),
    )


def pip_requirements() -> list[str]:
    return [f"{name}=={package_metadata.version(name)}" for name in _REQUIREMENTS]


def _base_plus_snapshot(
    snapshot_dir: str | Path, base_model_path: str | None
) -> tuple[LoadedModel, SnapshotMetadata, dict[str, torch.Tensor]]:
    metadata = read_snapshot_metadata(snapshot_dir)
    source = base_model_path or os.environ.get(BASE_MODEL_PATH_ENV) or metadata.base_model_source
    base = load_model(source)
    base_values = reconstitute(base.model, snapshot_dir, model_fingerprint=base.fingerprint)
    loaded = LoadedModel(base.model, base.tokenizer, metadata.result_fingerprint, source)
    return loaded, metadata, base_values


def load_snapshot_model(snapshot_dir: str | Path, *, base_model_path: str | None = None) -> LoadedModel:
    """Base model (from ``base_model_path``, ``$MEND_BASE_MODEL_PATH`` or the snapshot) + its snapshot."""
    return _base_plus_snapshot(snapshot_dir, base_model_path)[0]


def _prompts(model_input: Any) -> list[str]:
    """Prompts from a DataFrame (column ``prompt``, or its only column), a Series, a list or a string."""
    if isinstance(model_input, pd.DataFrame):
        if "prompt" in model_input.columns:
            model_input = model_input["prompt"]
        elif len(model_input.columns) == 1:
            model_input = model_input.iloc[:, 0]
        else:
            raise ValueError(f"expected a 'prompt' column, got columns {list(model_input.columns)}")
    if isinstance(model_input, str):
        model_input = [model_input]
    prompts = list(model_input)
    for index, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise ValueError(f"prompt {index} is {type(prompt).__name__}, not a string")
    return prompts


@torch.no_grad()
def greedy_completions(loaded: LoadedModel, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy continuation of each prompt, decoded without the prompt and special tokens."""
    if not 1 <= max_new_tokens <= _MAX_NEW_TOKENS_LIMIT:
        raise ValueError(f"max_new_tokens must be in 1..{_MAX_NEW_TOKENS_LIMIT}, got {max_new_tokens}")
    tokenizer, model = loaded.tokenizer, loaded.model
    device = next(model.parameters()).device
    completions = []
    # One prompt at a time: the tokenizer pads on the right (for scoring), which batched generation
    # cannot use, and serving traffic for this model is small.
    for prompt in prompts:
        encoded = tokenizer(prompt, return_tensors="pt").to(device)
        output = model.generate(
            **encoded,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=tokenizer.pad_token_id,
        )
        new_tokens = output[0, encoded["input_ids"].shape[1] :]
        completions.append(tokenizer.decode(new_tokens, skip_special_tokens=True))
    return completions


class MendSnapshotModel(PythonModel):
    """pyfunc model: the base model plus the ``snapshot`` artifact; predicts greedy completions."""

    def __init__(self) -> None:
        self.loaded: LoadedModel | None = None

    def load_context(self, context) -> None:
        self.loaded = load_snapshot_model(context.artifacts[SNAPSHOT_ARTIFACT])

    # Annotated as a DataFrame so MLflow keeps the explicit signature instead of inferring one.
    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> list[str]:
        if self.loaded is None:
            raise RuntimeError("MendSnapshotModel.predict called before load_context")
        max_new_tokens = int((params or {}).get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
        return greedy_completions(self.loaded, _prompts(model_input), max_new_tokens)


@dataclass(frozen=True)
class LoggedSnapshotModel:
    model_id: str
    model_uri: str  # models:/<model_id>, the source of a registered version


def log_snapshot_model(
    snapshot_dir: str | Path, *, run_id: str, name: str = "model", experiment_id: str | None = None
) -> LoggedSnapshotModel:
    """Log a snapshot directory as a pyfunc model output of run ``run_id`` (active or not)."""
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    # Created here rather than inside Model.log so it lands in the run's experiment (and artifact
    # root) even when the run is not active in this thread.
    logged = client.create_logged_model(
        experiment_id=experiment_id or run.info.experiment_id, name=name, source_run_id=run_id
    )
    with tempfile.TemporaryDirectory() as scratch:
        code_path = Path(scratch) / "mend_snapshot_model.py"
        code_path.write_text(_MODEL_CODE)
        with warnings.catch_warnings():
            # An input example would make MLflow load the base model just to validate it.
            warnings.filterwarnings(
                "ignore", message=".*input example was not provided", category=UserWarning
            )
            Model.log(
                artifact_path=None,
                name=name,
                flavor=mlflow.pyfunc,
                run_id=run_id,
                model_id=logged.model_id,
                python_model=str(code_path),
                artifacts={SNAPSHOT_ARTIFACT: str(snapshot_dir)},
                signature=_signature(),
                pip_requirements=pip_requirements(),
                flavor_name="pyfunc.ModelFromCode",
            )
    client.finalize_logged_model(logged.model_id, "READY")
    return LoggedSnapshotModel(logged.model_id, f"models:/{logged.model_id}")


@dataclass
class RegisteredModelState:
    """A registered version loaded and reconstituted, with what the next snapshot needs."""

    loaded: LoadedModel
    version: str
    metadata: SnapshotMetadata
    base_values: dict[str, torch.Tensor]  # base-model values of the tensors the snapshot replaced


def _snapshot_subdir(model_dir: Path) -> Path:
    flavor = Model.load(str(model_dir)).flavors.get("python_function", {})
    artifacts = flavor.get("artifacts", {})
    if SNAPSHOT_ARTIFACT not in artifacts:
        raise ValueError(f"{model_dir}: not a MEND snapshot model (no '{SNAPSHOT_ARTIFACT}' artifact)")
    return model_dir / artifacts[SNAPSHOT_ARTIFACT]["path"]


def load_registered(
    model_name: str,
    version_or_alias: str | int,
    tracking_uri: str | None = None,
    *,
    base_model_path: str | None = None,
) -> RegisteredModelState:
    """Download a registered version's snapshot, load its base and reconstitute (checksum + fingerprint)."""
    version = resolve_version(model_name, version_or_alias, tracking_uri=tracking_uri)
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{model_name}/{version.version}", dst_path=scratch
            )
        )
        loaded, metadata, base_values = _base_plus_snapshot(_snapshot_subdir(model_dir), base_model_path)
    LOGGER.info("loaded %s version %s (%s)", model_name, version.version, metadata.result_fingerprint[:12])
    return RegisteredModelState(loaded, str(version.version), metadata, base_values)


def load_registered_model(
    model_name: str, version_or_alias: str | int, tracking_uri: str | None = None
) -> LoadedModel:
    """The model of a registered version (number or alias such as ``"champion"``), verified."""
    return load_registered(model_name, version_or_alias, tracking_uri).loaded
