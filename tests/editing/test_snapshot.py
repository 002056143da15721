"""Changed-tensor snapshots: round trip, integrity checks, and refusals that leave the model untouched."""

from __future__ import annotations

import copy
import hashlib
import json

import pytest
import torch
from safetensors.torch import save_file

from editing.core.apply import EditResult
from editing.core.models import fingerprint
from editing.core.snapshot import (
    METADATA_FILE,
    TENSORS_FILE,
    BaseModelMismatchError,
    SnapshotError,
    SnapshotIntegrityError,
    SnapshotMetadata,
    changed_tensors,
    load_snapshot,
    read_snapshot_metadata,
    reconstitute,
    save_snapshot,
)


def preset_deltas(loaded, scale: float = 1e-2, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    names = loaded.preset.weight_names(len(loaded.model.get_submodule(loaded.preset.blocks)))
    parameters = dict(loaded.model.named_parameters())
    return {name: scale * torch.randn(parameters[name].shape, generator=generator) for name in names}


def logits_of(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([[3, 4, 5, 6, 7]])).logits


def edited_snapshot(loaded, directory, **metadata_fields):
    """Snapshot of the preset-weight edit of ``loaded``; returns (directory, edited fingerprint, logits)."""
    base_state = {name: tensor.clone() for name, tensor in loaded.model.state_dict().items()}
    with EditResult(preset_deltas(loaded)).applied(loaded.model) as model:
        tensors = changed_tensors(base_state, model)
        edited_fingerprint, edited_logits = fingerprint(model), logits_of(model)
    fields = {
        "base_fingerprint": loaded.fingerprint,
        "result_fingerprint": edited_fingerprint,
        "base_model_source": loaded.source,
        "editor": "mend",
        "derived_from_version": "1",
        "flag_ids": ("flag-a", "flag-b"),
    }
    metadata = SnapshotMetadata(**(fields | metadata_fields))
    return save_snapshot(directory, tensors, metadata), edited_fingerprint, edited_logits


def test_changed_tensors_are_exactly_the_edited_weights(tiny_model):
    base_state = {name: tensor.clone() for name, tensor in tiny_model.model.state_dict().items()}
    deltas = preset_deltas(tiny_model)
    with EditResult(deltas).applied(tiny_model.model) as model:
        changed = changed_tensors(base_state, model)
        assert sorted(changed) == sorted(deltas)
        name = next(iter(deltas))
        assert torch.equal(changed[name], base_state[name] + deltas[name])
    assert changed_tensors(base_state, tiny_model.model) == {}


def test_save_load_round_trip(tiny_model, tmp_path):
    directory, edited_fingerprint, _ = edited_snapshot(tiny_model, tmp_path / "snap")
    tensors, metadata = load_snapshot(directory)
    assert sorted(tensors) == sorted(preset_deltas(tiny_model)) == list(metadata.tensor_names)
    assert metadata.base_fingerprint == tiny_model.fingerprint
    assert metadata.result_fingerprint == edited_fingerprint
    assert metadata.flag_ids == ("flag-a", "flag-b")
    assert metadata.derived_from_version == "1"
    assert len(metadata.checksum_sha256) == 64
    assert read_snapshot_metadata(directory) == metadata
    assert sorted(path.name for path in directory.iterdir()) == [TENSORS_FILE, METADATA_FILE]


def test_reconstitute_reproduces_the_edited_model(tiny_model, tmp_path):
    directory, edited_fingerprint, edited_logits = edited_snapshot(tiny_model, tmp_path / "snap")
    model = copy.deepcopy(tiny_model.model)
    replaced = reconstitute(model, directory)
    assert fingerprint(model) == edited_fingerprint
    assert torch.equal(logits_of(model), edited_logits)
    # What it returns are the base values it overwrote: putting them back gives the base model.
    for name, tensor in replaced.items():
        model.get_parameter(name).data.copy_(tensor)
    assert fingerprint(model) == tiny_model.fingerprint


def test_tampered_tensors_file_is_detected(tiny_llama, tmp_path):
    directory, _, _ = edited_snapshot(tiny_llama, tmp_path / "snap")
    data = bytearray((directory / TENSORS_FILE).read_bytes())
    data[-1] ^= 0x01  # one bit of one weight
    (directory / TENSORS_FILE).write_bytes(bytes(data))
    with pytest.raises(SnapshotIntegrityError, match="sha256"):
        load_snapshot(directory)
    model = copy.deepcopy(tiny_llama.model)
    with pytest.raises(SnapshotIntegrityError):
        reconstitute(model, directory)
    assert fingerprint(model) == tiny_llama.fingerprint


def test_listed_names_must_match_the_file(tiny_llama, tmp_path):
    directory, _, _ = edited_snapshot(tiny_llama, tmp_path / "snap")
    raw = json.loads((directory / METADATA_FILE).read_text())
    raw["tensor_names"] = raw["tensor_names"][:-1]
    (directory / METADATA_FILE).write_text(json.dumps(raw))
    with pytest.raises(SnapshotIntegrityError, match="lists"):
        load_snapshot(directory)


def test_wrong_base_is_refused(tiny_llama, tiny_gpt2, tmp_path):
    directory, _, _ = edited_snapshot(tiny_llama, tmp_path / "snap")
    with pytest.raises(BaseModelMismatchError, match="applies to base model"):
        reconstitute(copy.deepcopy(tiny_gpt2.model), directory)
    # Same architecture, different weights: still the wrong base.
    other = copy.deepcopy(tiny_llama.model)
    with torch.no_grad():
        other.get_parameter("model.norm.weight").add_(1.0)
    other_fingerprint = fingerprint(other)
    with pytest.raises(BaseModelMismatchError):
        reconstitute(other, directory)
    assert fingerprint(other) == other_fingerprint


def test_non_finite_values_are_refused(tiny_llama, tmp_path):
    directory, _, _ = edited_snapshot(tiny_llama, tmp_path / "snap")
    tensors, metadata = load_snapshot(directory)
    name = metadata.tensor_names[-1]
    tensors[name][0, 0] = float("nan")
    with pytest.raises(SnapshotError, match="non-finite"):
        save_snapshot(tmp_path / "refused", tensors, metadata)
    assert not (tmp_path / "refused").exists()
    # A file written by something else, with a matching checksum, is refused on reconstitution.
    save_file(tensors, str(directory / TENSORS_FILE))
    raw = json.loads((directory / METADATA_FILE).read_text())
    raw["checksum_sha256"] = hashlib.sha256((directory / TENSORS_FILE).read_bytes()).hexdigest()
    (directory / METADATA_FILE).write_text(json.dumps(raw))
    model = copy.deepcopy(tiny_llama.model)
    with pytest.raises(SnapshotError, match=f"{name} has non-finite"):
        reconstitute(model, directory)
    assert fingerprint(model) == tiny_llama.fingerprint


def test_result_fingerprint_is_verified_and_failure_restores_the_base(tiny_llama, tmp_path):
    wrong = "0" * 64
    directory, _, _ = edited_snapshot(tiny_llama, tmp_path / "snap", result_fingerprint=wrong)
    model = copy.deepcopy(tiny_llama.model)
    with pytest.raises(SnapshotIntegrityError, match="restored"):
        reconstitute(model, directory)
    assert fingerprint(model) == tiny_llama.fingerprint


def test_empty_snapshot_is_the_base_model(tiny_gpt2, tmp_path):
    metadata = SnapshotMetadata(tiny_gpt2.fingerprint, tiny_gpt2.fingerprint, "somewhere", editor="base")
    directory = save_snapshot(tmp_path / "base", {}, metadata)
    model = copy.deepcopy(tiny_gpt2.model)
    assert reconstitute(model, directory, model_fingerprint=tiny_gpt2.fingerprint) == {}
    assert fingerprint(model) == tiny_gpt2.fingerprint
    changed = SnapshotMetadata(tiny_gpt2.fingerprint, "1" * 64, "somewhere", editor="base")
    with pytest.raises(SnapshotError, match="without changed tensors"):
        save_snapshot(tmp_path / "other", {}, changed)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("base_fingerprint", "abc", "64-digit"),
        ("editor", "", "non-empty"),
        ("flag_ids", ["not", "a", "tuple"], "tuple of strings"),
        ("tensor_names", ("a", "a"), "duplicates"),
        ("format_version", 99, "format"),
    ],
)
def test_metadata_validation_names_the_field(field, value, message):
    fields = {"base_fingerprint": "a" * 64, "result_fingerprint": "b" * 64}
    fields |= {"base_model_source": "dir", "editor": "mend", field: value}
    with pytest.raises(SnapshotError, match=message):
        SnapshotMetadata(**fields)


def test_unknown_metadata_field_is_an_error(tmp_path):
    metadata = SnapshotMetadata("a" * 64, "a" * 64, "dir", editor="base")
    directory = save_snapshot(tmp_path / "snap", {}, metadata)
    raw = json.loads((directory / METADATA_FILE).read_text()) | {"surprise": 1}
    (directory / METADATA_FILE).write_text(json.dumps(raw))
    with pytest.raises(SnapshotError, match="surprise"):
        read_snapshot_metadata(directory)
