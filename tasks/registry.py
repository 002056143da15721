"""The model registry for edited models: the base model and gated candidates, registered and looked up.

Edited models are one registered model (default ``mend-smollm2-135m-instruct``) whose version 1 is the
base model (an empty snapshot) and whose later versions are candidates: snapshots of edits that passed
the evaluation gate, the newest named by the ``candidate`` alias. This module registers them, finds
versions by number, alias or run key, and holds the tag names and client helpers that the rest of the
registry code shares. Moving ``champion`` (approval, promotion, rollback) is in ``tasks.champion``;
trained editors have their own registered model in ``tasks.editor_registry``. All state lives in MLflow
tags and aliases, visible and editable in the MLflow UI.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from editing.core.snapshot import SnapshotMetadata, load_snapshot, save_snapshot
from tasks.tracking import DEFAULT_EXPERIMENT, configure_tracking, fix_run

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

LOGGER = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "mend-smollm2-135m-instruct"
CHAMPION = "champion"
CANDIDATE = "candidate"


class Tag:
    """Model-version tag names (the MLflow UI shows and edits them); editors use some of them too."""

    ROLE = "role"  # "base" or "candidate"
    FINGERPRINT = "fingerprint"  # of the model this version reconstitutes to
    BASE_FINGERPRINT = "base_fingerprint"
    GATE_PASSED = "gate_passed"
    RUN_ID = "run_id"
    FLAG_IDS = "flag_ids"  # JSON list
    RUN_KEY = "run_key"
    DERIVED_FROM = "derived_from_version"
    APPROVED_BY = "approved_by"
    APPROVED_AT = "approved_at"
    PREVIOUS_CHAMPION = "previous_champion"
    PROMOTED_BY = "promoted_by"
    PROMOTED_AT = "promoted_at"
    ROLLED_BACK_AT = "rolled_back_at"


class RegistryError(RuntimeError):
    """The registry is not in the state an operation needs."""


class GateFailedError(RegistryError):
    """A candidate whose evaluation gate failed was offered for registration."""


def registry_client(tracking_uri: str | None = None) -> MlflowClient:
    import mlflow

    configure_tracking(tracking_uri)
    return mlflow.MlflowClient()


def _error_code(error: Exception) -> str | None:
    return getattr(error, "error_code", None)


def _quoted(value: str, what: str) -> str:
    """A value for an MLflow filter string; quotes cannot be escaped there, so they are refused."""
    if not value or "'" in value or "\\" in value:
        raise ValueError(f"{what} must be non-empty without quotes or backslashes, got {value!r}")
    return f"'{value}'"


def search_versions(client: MlflowClient, model_name: str, **tags: str) -> list[ModelVersion]:
    """Every version of ``model_name`` carrying all the given tag values, lowest version first."""
    from mlflow.exceptions import MlflowException

    clauses = [f"name = {_quoted(model_name, 'model name')}"]
    clauses += [f"tags.{key} = {_quoted(value, key)}" for key, value in tags.items()]
    found, token = [], None
    while True:
        try:
            page = client.search_model_versions(" and ".join(clauses), page_token=token)
        except MlflowException as error:
            if _error_code(error) == "RESOURCE_DOES_NOT_EXIST":  # no such registered model yet
                return []
            raise
        found.extend(page)
        token = page.token
        if not token:
            return sorted(found, key=lambda version: int(version.version))


def resolve_version(model_name: str, version_or_alias: str | int, *, tracking_uri: str | None = None):
    """The ``ModelVersion`` for a version number or an alias (``champion``, ``candidate``)."""
    from mlflow.exceptions import MlflowException

    client = registry_client(tracking_uri)
    key = str(version_or_alias)
    try:
        if key.isdigit():
            return client.get_model_version(model_name, key)
        return client.get_model_version_by_alias(model_name, key)
    except MlflowException as error:
        raise RegistryError(f"{model_name}: no version or alias {key!r} ({error.message})") from error


def alias_version(client: MlflowClient, model_name: str, alias: str) -> str | None:
    """The version ``alias`` points at, or None when the alias (or the model) does not exist yet."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(model_name, alias).version)
    except MlflowException as error:
        if _error_code(error) in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def champion_version(model_name: str = DEFAULT_MODEL_NAME, *, tracking_uri: str | None = None) -> str | None:
    """The version the ``champion`` alias points at, or None when there is none yet."""
    return alias_version(registry_client(tracking_uri), model_name, CHAMPION)


def ensure_registered_model(client: MlflowClient, model_name: str, description: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(model_name)
    except MlflowException as error:
        if _error_code(error) != "RESOURCE_DOES_NOT_EXIST":
            raise
        try:
            client.create_registered_model(model_name, description=description)
        except MlflowException as race:  # created concurrently by another process
            if _error_code(race) != "RESOURCE_ALREADY_EXISTS":
                raise


@contextmanager
def _run_for(run_id: str | None, run_name: str) -> Iterator[str]:
    """The given run, else the active one, else a new run in the default experiment."""
    import mlflow

    if run_id:
        yield run_id
    elif (active := mlflow.active_run()) is not None:
        yield active.info.run_id
    else:
        with fix_run(DEFAULT_EXPERIMENT, run_name=run_name) as new_run_id:
            yield new_run_id


def _register_snapshot(
    client: MlflowClient, model_name: str, snapshot_dir: Path, run_id: str, tags: Mapping[str, str]
) -> ModelVersion:
    from tasks.mlflow_flavor import log_snapshot_model

    logged = log_snapshot_model(snapshot_dir, run_id=run_id)
    ensure_registered_model(client, model_name, "Edited language models (MEND snapshots over a base model)")
    # Tags go in with the version, so no version is ever visible without its gate result and run key.
    version = client.create_model_version(
        model_name, source=logged.model_uri, run_id=run_id, tags=dict(tags), model_id=logged.model_id
    )
    LOGGER.info("registered %s version %s (run %s)", model_name, version.version, run_id)
    return version


def _base_versions(client: MlflowClient, model_name: str) -> list[ModelVersion]:
    return search_versions(client, model_name, **{Tag.ROLE: "base"})


def ensure_base_registered(
    model_name: str,
    base_location: str,
    base_fingerprint: str,
    *,
    run_id: str | None = None,
    tracking_uri: str | None = None,
) -> str:
    """Register the base model (an empty snapshot) and make it champion, once; returns its version."""
    client = registry_client(tracking_uri)
    bases = _base_versions(client, model_name)
    if bases:
        base = bases[0]
        if base.tags.get(Tag.FINGERPRINT) != base_fingerprint:
            raise RegistryError(
                f"{model_name}: registered base version {base.version} is model "
                f"{base.tags.get(Tag.FINGERPRINT, '?')[:12]}, not {base_fingerprint[:12]}; "
                "use another registered model name for another base model"
            )
        version = str(base.version)
    else:
        metadata = SnapshotMetadata(base_fingerprint, base_fingerprint, base_location, editor="base")
        tags = {Tag.ROLE: "base", Tag.FINGERPRINT: base_fingerprint, Tag.BASE_FINGERPRINT: base_fingerprint}
        with tempfile.TemporaryDirectory() as scratch, _run_for(run_id, "register-base") as target_run:
            snapshot_dir = save_snapshot(Path(scratch) / "snapshot", {}, metadata)
            version = str(_register_snapshot(client, model_name, snapshot_dir, target_run, tags).version)
    if alias_version(client, model_name, CHAMPION) is None:
        client.set_registered_model_alias(model_name, CHAMPION, version)
        LOGGER.info("%s: base version %s is champion", model_name, version)
    return version


def find_version_by_run_key(model_name: str, run_key: str, *, tracking_uri: str | None = None) -> str | None:
    """The version registered by the fix run ``run_key``, so a rerun reuses it instead of registering twice."""
    found = search_versions(registry_client(tracking_uri), model_name, **{Tag.RUN_KEY: run_key})
    if len(found) > 1:
        versions = [str(version.version) for version in found]
        LOGGER.warning("%s: run key %s has versions %s; using the first", model_name, run_key, versions)
    return str(found[0].version) if found else None


def register_candidate(
    model_name: str,
    snapshot_dir: str | Path,
    *,
    run_id: str,
    gate_passed: bool,
    flag_ids: Sequence[str],
    run_key: str,
    derived_from_version: str | None,
    tracking_uri: str | None = None,
) -> str:
    """Register a gated candidate and point ``candidate`` at it; idempotent per ``run_key``."""
    if gate_passed is not True:
        raise GateFailedError(f"{model_name}: refusing to register run {run_key}: its evaluation gate failed")
    client = registry_client(tracking_uri)
    _quoted(run_key, "run_key")
    existing = find_version_by_run_key(model_name, run_key, tracking_uri=tracking_uri)
    if existing is not None:
        LOGGER.info("%s: run key %s already registered as version %s", model_name, run_key, existing)
        client.set_registered_model_alias(model_name, CANDIDATE, existing)
        return existing
    _, metadata = load_snapshot(snapshot_dir)  # checks the checksum before anything is registered
    derived = None if derived_from_version is None else str(derived_from_version)
    if metadata.derived_from_version not in (None, derived):
        raise RegistryError(
            f"{snapshot_dir}: snapshot says derived from version {metadata.derived_from_version}, "
            f"caller says {derived}"
        )
    bases = _base_versions(client, model_name)
    if bases and bases[0].tags.get(Tag.FINGERPRINT) != metadata.base_fingerprint:
        raise RegistryError(
            f"{snapshot_dir}: snapshot is over base {metadata.base_fingerprint[:12]}, but {model_name}'s "
            f"base (version {bases[0].version}) is {bases[0].tags.get(Tag.FINGERPRINT, '?')[:12]}"
        )
    tags = {
        Tag.ROLE: "candidate",
        Tag.GATE_PASSED: "true",
        Tag.RUN_ID: run_id,
        Tag.FLAG_IDS: json.dumps(list(flag_ids)),
        Tag.RUN_KEY: run_key,
        Tag.DERIVED_FROM: derived or "",
        Tag.FINGERPRINT: metadata.result_fingerprint,
        Tag.BASE_FINGERPRINT: metadata.base_fingerprint,
    }
    version = str(_register_snapshot(client, model_name, Path(snapshot_dir), run_id, tags).version)
    client.set_registered_model_alias(model_name, CANDIDATE, version)
    return version
