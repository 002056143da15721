"""Checkpoints and snapshots are checked before use: a truncated or altered file is refused by its
checksum, a pickle offered as a checkpoint is refused without being unpickled, and nothing in the
project unpickles at all."""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import pytest

from editing.config import EditorConfig
from editing.core.snapshot import SnapshotError, load_snapshot
from editing.core.targets import resolve_scope
from editing.mend.editor import MendEditor
from editing.mend.editor_net import MendNetwork
from editing.mend.protected import PROTECTED_FILE
from editing.training.checkpoint import (
    EDITOR_JSON,
    EDITOR_TENSORS,
    EditorChecksumError,
    load_editor,
    save_editor,
)
from tests.tiny import tiny_protected

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def checkpoint(tiny_llama, tmp_path) -> Path:
    scope = resolve_scope(tiny_llama.model)
    editor = MendEditor(MendNetwork(scope.layers, EditorConfig()), scope, tiny_protected(tiny_llama))
    return save_editor(
        tmp_path / "editor", editor, base_fingerprint=tiny_llama.fingerprint, model_type="llama"
    )


def test_an_intact_checkpoint_records_and_passes_its_checksums(checkpoint, tiny_llama):
    recorded = json.loads((checkpoint / EDITOR_JSON).read_text())["checksums_sha256"]
    assert set(recorded) == {EDITOR_TENSORS, PROTECTED_FILE}
    assert load_editor(checkpoint, base_fingerprint=tiny_llama.fingerprint).network is not None


@pytest.mark.parametrize("name", [EDITOR_TENSORS, PROTECTED_FILE])
@pytest.mark.parametrize("damage", ["truncated", "altered"])
def test_a_damaged_checkpoint_is_refused_by_its_checksum(checkpoint, tiny_llama, name, damage):
    path = checkpoint / name
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data[-5] ^= 0x01  # one bit of one weight: still a valid safetensors file
    path.write_bytes(bytes(data))
    with pytest.raises(
        EditorChecksumError, match=rf"{re.escape(name)}: sha256 .* does not match the recorded"
    ):
        load_editor(checkpoint, base_fingerprint=tiny_llama.fingerprint)


class _Payload:
    """What a malicious pickle does when unpickled: here, leave a file behind."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def test_a_pickle_offered_as_a_checkpoint_is_refused_unopened(checkpoint, tiny_llama, tmp_path):
    marker = tmp_path / "the-pickle-ran"
    payload = pickle.dumps(_Payload(marker))
    (checkpoint / EDITOR_TENSORS).write_bytes(payload)
    with pytest.raises(EditorChecksumError, match="does not match"):
        load_editor(checkpoint, base_fingerprint=tiny_llama.fingerprint)
    assert not marker.exists()

    # Even with the checksum forged to match, the file is read as safetensors, never unpickled.
    import hashlib

    description = json.loads((checkpoint / EDITOR_JSON).read_text())
    description["checksums_sha256"][EDITOR_TENSORS] = hashlib.sha256(payload).hexdigest()
    (checkpoint / EDITOR_JSON).write_text(json.dumps(description))
    with pytest.raises(Exception, match=r"(?i)header|safetensor|deserializ"):
        load_editor(checkpoint, base_fingerprint=tiny_llama.fingerprint)
    assert not marker.exists()


def test_an_altered_candidate_snapshot_is_refused_before_use(tiny_llama, tmp_path):
    import copy

    from editing.core.models import LoadedModel
    from tests.integration.mlflow_fixtures import edit_and_snapshot

    edited = LoadedModel(
        copy.deepcopy(tiny_llama.model), tiny_llama.tokenizer, tiny_llama.fingerprint, "tiny"
    )
    directory, _ = edit_and_snapshot(edited, tmp_path / "snapshot", derived_from_version="1")
    load_snapshot(directory)  # intact: accepted
    tensors = directory / "changed.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-3] ^= 0x01
    tensors.write_bytes(bytes(data))
    with pytest.raises(SnapshotError, match="does not match the recorded"):
        load_snapshot(directory)
    tensors.write_bytes(bytes(data[: len(data) // 3]))
    with pytest.raises(SnapshotError, match="does not match the recorded"):
        load_snapshot(directory)


def _project_sources() -> list[Path]:
    folders = ("editing", "tasks", "flows", "expectations", "benchmarks", "infra")
    return sorted(path for folder in folders for path in (ROOT / folder).rglob("*.py"))


def test_nothing_in_the_project_unpickles():
    unpickling = re.compile(r"\bimport pickle\b|\bpickle\.loads?\(|\bcloudpickle\b|\bjoblib\.load\(|\bdill\b")
    offenders = []
    for path in _project_sources():
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if unpickling.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
            # torch.load unpickles unless weights_only=True; the project has no reason to call it.
            if "torch.load(" in line and "weights_only=True" not in line:
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []
    assert len(_project_sources()) > 50  # the scan really read the project


def test_a_checkpoint_holds_only_json_and_safetensors(checkpoint):
    # Nothing a loader could be tempted to unpickle.
    assert {path.suffix for path in checkpoint.iterdir()} == {".json", ".safetensors"}
