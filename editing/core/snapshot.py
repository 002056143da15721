"""A candidate model stored as its base model plus the tensors an edit changed.

A nightly candidate must not cost another copy of the base weights, so a snapshot directory holds only
``changed.safetensors`` (the full new values of the parameters that differ from the base model) and
``snapshot.json`` (which base it applies to, a checksum of the tensors file, and the fingerprint the
reconstituted model must have). ``reconstitute`` refuses the wrong base, a tampered file and non-finite
values, and verifies the result, so a model rebuilt from a snapshot is the model that was evaluated.

Only safetensors and JSON are written or read: nothing here unpickles.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from editing.core.models import fingerprint

LOGGER = logging.getLogger(__name__)

TENSORS_FILE = "changed.safetensors"
METADATA_FILE = "snapshot.json"
SNAPSHOT_FORMAT = 1
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")


class SnapshotError(ValueError):
    """A snapshot is malformed or does not fit the model it is applied to."""


class SnapshotIntegrityError(SnapshotError):
    """A snapshot's files do not match its recorded checksum, names or resulting fingerprint."""


class BaseModelMismatchError(SnapshotError):
    """A snapshot is applied to a model other than the base it was made from."""


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class SnapshotMetadata:
    """What ``snapshot.json`` records. ``tensor_names`` and ``checksum_sha256`` are filled on save."""

    base_fingerprint: str  # editing.core.models.fingerprint of the base model the tensors apply to
    result_fingerprint: str  # fingerprint of base + tensors: checked after reconstitution
    base_model_source: str  # where the base model can be loaded from (directory, .gguf or hub id)
    editor: str  # which editor produced the change ("mend", "ft", "base" for the unedited model)
    derived_from_version: str | None = None  # registered version the edit was applied to
    flag_ids: tuple[str, ...] = ()  # the flagged mistakes this candidate fixes
    # Every flag whose edit is in these weights: the champion's ledger plus ``flag_ids`` (a candidate is
    # the base model plus one edit of its whole ledger, so this is what it must keep fixed).
    ledger_flag_ids: tuple[str, ...] = ()
    created_at: str = field(default_factory=utc_now)
    tensor_names: tuple[str, ...] = ()
    checksum_sha256: str = ""  # sha256 of changed.safetensors
    format_version: int = SNAPSHOT_FORMAT

    def __post_init__(self) -> None:
        for name in ("base_fingerprint", "result_fingerprint"):
            value = getattr(self, name)
            if not isinstance(value, str) or not _FINGERPRINT.fullmatch(value):
                raise SnapshotError(f"SnapshotMetadata.{name} must be a 64-digit sha256 hex, got {value!r}")
        for name in ("base_model_source", "editor"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise SnapshotError(f"SnapshotMetadata.{name} must be a non-empty string")
        for name in ("flag_ids", "ledger_flag_ids", "tensor_names"):
            values = getattr(self, name)
            if not isinstance(values, tuple) or not all(isinstance(item, str) for item in values):
                raise SnapshotError(f"SnapshotMetadata.{name} must be a tuple of strings, got {values!r}")
        if len(set(self.tensor_names)) != len(self.tensor_names):
            raise SnapshotError("SnapshotMetadata.tensor_names has duplicates")
        if self.format_version != SNAPSHOT_FORMAT:
            raise SnapshotError(f"snapshot format {self.format_version} is not {SNAPSHOT_FORMAT}")

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        return {name: list(value) if isinstance(value, tuple) else value for name, value in values.items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, origin: str = "<memory>") -> SnapshotMetadata:
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SnapshotError(f"{origin}: unknown field(s) {unknown}")
        converted = {name: tuple(v) if isinstance(v, list) else v for name, v in values.items()}
        try:
            return cls(**converted)
        except TypeError as error:  # a required field is missing
            raise SnapshotError(f"{origin}: {error}") from error


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_base_model_file(
    path: Path, file_format: str, base_fingerprint: str, error: type[Exception]
) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a safetensors file measured on one base model, refused with ``error`` when
    it is of another format or another base model."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if metadata.get("format") != file_format:
        raise error(f"{path}: not a {file_format} file")
    if metadata.get("base_fingerprint") != base_fingerprint:
        raise error(f"{path}: measured on another base model")
    return metadata, load_file(str(path))


def _state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every named parameter and buffer, tied aliases included, as the tensors the model computes with."""
    tensors: dict[str, torch.Tensor] = dict(model.named_parameters(remove_duplicate=False))
    tensors.update(model.named_buffers(remove_duplicate=False))
    return tensors


def _check_finite(tensors: Mapping[str, torch.Tensor], origin: str) -> None:
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise SnapshotError(f"{origin}: tensor {name} has non-finite values")


def save_snapshot(
    directory: str | Path, tensors: Mapping[str, torch.Tensor], metadata: SnapshotMetadata
) -> Path:
    """Write ``tensors`` and ``metadata`` (with names and checksum filled in) to ``directory``.

    The JSON is written last and both files are replaced atomically, so a ``snapshot.json`` always
    describes a complete tensors file, also when an earlier attempt crashed half way.
    """
    directory = Path(directory)
    if not tensors and metadata.result_fingerprint != metadata.base_fingerprint:
        raise SnapshotError(
            "a snapshot without changed tensors must have result_fingerprint == base_fingerprint"
        )
    for name, tensor in tensors.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise SnapshotError(f"snapshot tensors must map names to tensors, got {name!r}: {type(tensor)}")
    _check_finite(tensors, str(directory))
    # safetensors refuses tensors that share memory (tied weights): give each its own contiguous copy.
    stored = {name: tensors[name].detach().to("cpu").contiguous().clone() for name in sorted(tensors)}
    directory.mkdir(parents=True, exist_ok=True)
    tensors_path = directory / TENSORS_FILE
    scratch = directory / f".{TENSORS_FILE}.partial"
    save_file(stored, str(scratch))
    os.replace(scratch, tensors_path)
    complete = replace(metadata, tensor_names=tuple(stored), checksum_sha256=file_sha256(tensors_path))
    scratch_json = directory / f".{METADATA_FILE}.partial"
    scratch_json.write_text(json.dumps(complete.to_dict(), indent=2, sort_keys=True) + "\n")
    os.replace(scratch_json, directory / METADATA_FILE)
    size_mb = tensors_path.stat().st_size / 2**20
    LOGGER.info("snapshot with %d changed tensor(s) (%.1f MiB) saved to %s", len(stored), size_mb, directory)
    return directory


def read_snapshot_metadata(directory: str | Path) -> SnapshotMetadata:
    """The metadata of a snapshot, without reading or checking its tensors."""
    path = Path(directory) / METADATA_FILE
    if not path.is_file():
        raise SnapshotError(f"{path}: no snapshot metadata (is {directory} a snapshot directory?)")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise SnapshotIntegrityError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(raw, dict):
        raise SnapshotIntegrityError(f"{path}: expected a JSON object")
    return SnapshotMetadata.from_dict(raw, origin=str(path))


def load_snapshot(directory: str | Path) -> tuple[dict[str, torch.Tensor], SnapshotMetadata]:
    """Read a snapshot after checking its tensors file against the recorded checksum and names."""
    directory = Path(directory)
    metadata = read_snapshot_metadata(directory)
    tensors_path = directory / TENSORS_FILE
    if not tensors_path.is_file():
        raise SnapshotIntegrityError(f"{tensors_path}: missing")
    actual = file_sha256(tensors_path)
    if actual != metadata.checksum_sha256:
        raise SnapshotIntegrityError(
            f"{tensors_path}: sha256 {actual} does not match the recorded {metadata.checksum_sha256}"
        )
    tensors = load_file(str(tensors_path))
    if sorted(tensors) != sorted(metadata.tensor_names):
        raise SnapshotIntegrityError(
            f"{tensors_path}: holds {sorted(tensors)} but {METADATA_FILE} lists {sorted(metadata.tensor_names)}"
        )
    return tensors, metadata


def _check_fits(
    tensors: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor], origin: str
) -> None:
    missing = sorted(set(tensors) - set(targets))
    if missing:
        raise SnapshotError(f"{origin}: model has no parameter(s) {missing}")
    for name, tensor in tensors.items():
        target = targets[name]
        if tensor.shape != target.shape or tensor.dtype != target.dtype:
            raise SnapshotError(
                f"{origin}: tensor {name} is {tuple(tensor.shape)} {tensor.dtype}, "
                f"the model's is {tuple(target.shape)} {target.dtype}"
            )
    _check_finite(tensors, origin)


@torch.no_grad()
def reconstitute(
    model: nn.Module, directory: str | Path, *, model_fingerprint: str | None = None
) -> dict[str, torch.Tensor]:
    """Turn the base ``model`` into the snapshot's model in place; returns the base values it replaced.

    ``model_fingerprint`` skips hashing the model once more when the caller already has it (for
    example ``LoadedModel.fingerprint``). Every check runs before any weight is written, and a result
    whose fingerprint differs from the recorded one is rolled back before the error is raised.
    """
    tensors, metadata = load_snapshot(directory)
    origin = str(directory)
    current = model_fingerprint or fingerprint(model)
    if current != metadata.base_fingerprint:
        raise BaseModelMismatchError(
            f"{origin}: snapshot applies to base model {metadata.base_fingerprint[:12]} "
            f"(from {metadata.base_model_source}), but this model is {current[:12]}"
        )
    targets = _state_tensors(model)
    _check_fits(tensors, targets, origin)
    originals = {name: targets[name].detach().clone() for name in tensors}
    for name, tensor in tensors.items():
        targets[name].copy_(tensor.to(targets[name].device))
    result = fingerprint(model)
    if result != metadata.result_fingerprint:
        for name, original in originals.items():
            targets[name].copy_(original)
        raise SnapshotIntegrityError(
            f"{origin}: reconstituted model has fingerprint {result[:12]}, "
            f"recorded {metadata.result_fingerprint[:12]}; model restored to its base weights"
        )
    LOGGER.info("reconstituted %s: %d tensor(s) replaced", metadata.result_fingerprint[:12], len(tensors))
    return originals


def changed_tensors(base_state: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the model's tensors whose values differ from ``base_state``, by name.

    Only names in ``base_state`` are compared: pass the base model's full state dict, or at least the
    base values of every parameter that may have changed (``reconstitute`` returns those it replaced).
    """
    current = _state_tensors(model)
    missing = sorted(set(base_state) - set(current))
    if missing:
        raise SnapshotError(f"model has no parameter(s) {missing}")
    changed = {}
    for name in sorted(base_state):
        tensor, base = current[name].detach(), base_state[name]
        if (
            tensor.shape != base.shape
            or tensor.dtype != base.dtype
            or not torch.equal(tensor, base.to(tensor))
        ):
            changed[name] = tensor.clone()
    return changed
