"""Model access for the pipeline's tasks: the base model, registered versions, and run workspaces."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from prefect import task

from editing.core.models import default_model_dir, load_model
from tasks.settings import FixSettings
from tasks.storage import Store

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class BaseInfo:
    fingerprint: str
    location: str  # where the base model loads from on this machine
    base_version: str  # registry version holding the unedited base
    champion_version: str


def base_location(settings: FixSettings) -> str:
    """An absolute location for the base model, so registered snapshots can find it again."""
    if settings.base_model == "default":
        return str(default_model_dir())
    path = Path(settings.base_model)
    return str(path.resolve()) if path.exists() else settings.base_model


def ensure_base(settings: FixSettings) -> BaseInfo:
    """Register the base model as version 1 / champion on the first run; return the current champion."""
    from tasks.registry import champion_version, ensure_base_registered

    location = base_location(settings)
    loaded = load_model(location)
    base_version = ensure_base_registered(
        settings.registered_model, location, loaded.fingerprint, tracking_uri=settings.tracking_uri
    )
    champion = champion_version(settings.registered_model, tracking_uri=settings.tracking_uri)
    return BaseInfo(loaded.fingerprint, location, base_version, champion or base_version)


@task(name="ensure-base-registered", retries=2, retry_delay_seconds=5)
def ensure_base_task(settings: FixSettings) -> BaseInfo:
    return ensure_base(settings)


def load_version(settings: FixSettings, version: str):
    """A registered version, reconstituted and verified (``tasks.mlflow_flavor.RegisteredModelState``)."""
    from tasks.mlflow_flavor import load_registered

    return load_registered(settings.registered_model, version, settings.tracking_uri)


def download_dir(store: Store, prefix: str, target: Path) -> Path:
    """Copy every object under ``prefix`` into ``target`` (keeping relative paths)."""
    for key in store.list(prefix):
        store.download(key, target / key.removeprefix(prefix).lstrip("/"))
    return target


def upload_dir(store: Store, source: Path, prefix: str) -> str:
    for path in sorted(source.rglob("*")):
        if path.is_file():
            store.upload(path, f"{prefix.rstrip('/')}/{path.relative_to(source).as_posix()}")
    return prefix


def scratch_dir(run_id: str) -> Path:
    """A private local directory for one task's files (removed by the operating system's tmp policy)."""
    return Path(tempfile.mkdtemp(prefix=f"mend-{run_id[:8]}-"))
