"""Trained MEND editors in the model registry, one registered model ``mend-editor`` for all bases.

A version is an editor checkpoint directory (safetensors + JSON, as ``editing.training.checkpoint`` writes it)
logged as plain run artifacts, tagged with the fingerprint of the base model it was trained for and
its validation metrics. ``find_editor`` picks the newest version for a base model and keeps a local copy.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tasks.registry import Tag, ensure_registered_model, registry_client, search_versions
from tasks.tracking import mend_home

LOGGER = logging.getLogger(__name__)

EDITOR_MODEL_NAME = "mend-editor"
EDITOR_ARTIFACT_PATH = "editor_checkpoint"
# Editor checkpoints are safetensors + JSON; anything else (a pickled .pt, say) is refused.
_EDITOR_FILE_SUFFIXES = {".safetensors", ".json"}


def _check_editor_files(checkpoint_dir: Path) -> None:
    if not checkpoint_dir.is_dir():
        raise FileNotFoundError(f"editor checkpoint {checkpoint_dir} is not a directory")
    files = [path for path in checkpoint_dir.rglob("*") if path.is_file()]
    refused = sorted(str(path) for path in files if path.suffix not in _EDITOR_FILE_SUFFIXES)
    if refused or not files:
        raise ValueError(
            f"{checkpoint_dir}: editor checkpoints hold only safetensors + JSON; refused {refused}"
        )


def register_editor(
    checkpoint_dir: str | Path,
    base_fingerprint: str,
    metrics: Mapping[str, Any],
    run_id: str,
    *,
    tracking_uri: str | None = None,
) -> str:
    """Log an editor checkpoint directory to ``run_id`` and register it as a ``mend-editor`` version."""
    checkpoint_dir = Path(checkpoint_dir)
    _check_editor_files(checkpoint_dir)
    client = registry_client(tracking_uri)
    client.log_artifacts(run_id, str(checkpoint_dir), EDITOR_ARTIFACT_PATH)
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{EDITOR_ARTIFACT_PATH}"
    ensure_registered_model(
        client, EDITOR_MODEL_NAME, "Trained MEND editor networks, one line per base model"
    )
    tags = {Tag.BASE_FINGERPRINT: base_fingerprint, Tag.RUN_ID: run_id}
    tags |= {f"metric.{name}": str(value) for name, value in metrics.items()}
    version = client.create_model_version(EDITOR_MODEL_NAME, source=source, run_id=run_id, tags=tags)
    LOGGER.info("registered editor version %s for base %s", version.version, base_fingerprint[:12])
    return str(version.version)


def find_editor(
    base_fingerprint: str, *, dest_dir: str | Path | None = None, tracking_uri: str | None = None
) -> tuple[str, Path] | None:
    """Latest editor version trained for ``base_fingerprint`` and a local copy of its checkpoint."""
    client = registry_client(tracking_uri)
    found = search_versions(client, EDITOR_MODEL_NAME, **{Tag.BASE_FINGERPRINT: base_fingerprint})
    if not found:
        return None
    version = str(found[-1].version)
    return version, editor_checkpoint(version, dest_dir=dest_dir, tracking_uri=tracking_uri)


def editor_checkpoint(
    version: str, *, dest_dir: str | Path | None = None, tracking_uri: str | None = None
) -> Path:
    """A local copy of editor ``version``'s checkpoint.

    Copies are cached under ``$MEND_HOME/editors/<version>-<run id>``; the download goes to a scratch
    directory renamed into place, so a cache entry is always complete.
    """
    import mlflow

    model_version = registry_client(tracking_uri).get_model_version(EDITOR_MODEL_NAME, str(version))
    target = Path(dest_dir) if dest_dir else mend_home() / "editors" / f"{version}-{model_version.run_id}"
    if target.is_dir() and any(target.iterdir()):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        downloaded = mlflow.artifacts.download_artifacts(artifact_uri=model_version.source, dst_path=scratch)
        if target.exists():
            shutil.rmtree(target)
        os.replace(downloaded, target)
    LOGGER.info("editor version %s in %s", version, target)
    return target
