"""Editor checkpoints: safetensors for tensors, JSON for everything else, never pickle.

A checkpoint directory holds ``editor.safetensors`` (network weights, step sizes, solver weights and
normaliser statistics), ``editor.json`` (configs, the edited layers, training metrics, and the
fingerprint of the base model it was trained for) and, for a least-squares editor,
``protected_keys.safetensors`` (the base model's protected second moments, ``editing.mend.protected``). Training checkpoints add ``trainer_state.safetensors`` /
``trainer_state.json`` (optimizer state, RNG, data position, best network) for an exact resume.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from editing.config import EditorConfig
from editing.core.hooks import LayerInfo, Orientation
from editing.core.snapshot import file_sha256
from editing.core.targets import EditScope
from editing.mend.editor import MendEditor
from editing.mend.editor_net import MendNetwork
from editing.mend.protected import PROTECTED_FILE, ProtectedKeys

if TYPE_CHECKING:
    from editing.training.trainer import EditorTrainer

LOGGER = logging.getLogger(__name__)
FORMAT = "mend-editor/1"
EDITOR_TENSORS, EDITOR_JSON = "editor.safetensors", "editor.json"
STATE_TENSORS, STATE_JSON = "trainer_state.safetensors", "trainer_state.json"


class EditorMismatchError(ValueError):
    """The checkpoint was trained for a different base model."""


class EditorChecksumError(ValueError):
    """A checkpoint's tensor file does not match the checksum its description recorded (truncated,
    altered or swapped); nothing of it has been loaded."""


def verify_checksums(directory: str | Path, description: dict[str, Any]) -> None:
    """Check every tensor file the description lists against its sha256, before anything is read.

    Checkpoints written before checksums were recorded carry none; they are loaded with a warning.
    """
    directory = Path(directory)
    recorded = description.get("checksums_sha256")
    if recorded is None:
        LOGGER.warning("%s: checkpoint without checksums (written by an older version)", directory)
        return
    for name in (EDITOR_TENSORS, PROTECTED_FILE):
        path = directory / name
        if name not in recorded:
            if path.exists():
                raise EditorChecksumError(f"{path}: present but no checksum recorded in {EDITOR_JSON}")
            continue
        if not path.is_file():
            raise EditorChecksumError(f"{path}: missing ({EDITOR_JSON} records a checksum for it)")
        actual = file_sha256(path)
        if actual != recorded[name]:
            raise EditorChecksumError(
                f"{path}: sha256 {actual[:16]}... does not match the recorded {recorded[name][:16]}...; "
                "the file is truncated or altered: refusing to load it"
            )


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().to("cpu").contiguous() for name, tensor in tensors.items()}


def _replace_directory(staging: Path, target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)


def save_editor(
    directory: str | Path,
    editor: MendEditor,
    *,
    base_fingerprint: str,
    model_type: str,
    metrics: dict[str, Any] | None = None,
    train_config: dict[str, Any] | None = None,
    trainer: EditorTrainer | None = None,
) -> Path:
    """Write the editor (and, given a trainer, its resumable state) atomically to ``directory``."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}-"))
    save_file(_contiguous(editor.network.state_dict()), staging / EDITOR_TENSORS)
    description = {
        "format": FORMAT,
        "base_fingerprint": base_fingerprint,
        "model_type": model_type,
        "editor_config": editor.network.config.to_dict(),
        "blocks_path": editor.scope.blocks_path,
        "first_block": editor.scope.first_block,
        "layers": [
            {**asdict(layer), "orientation": layer.orientation.value} for layer in editor.scope.layers
        ],
        "train_config": train_config,
        "metrics": metrics or {},
    }
    if editor.protected is not None:
        editor.protected.save(staging)
    # Loading checks these before reading a byte of the tensors (verify_checksums).
    description["checksums_sha256"] = {
        name: file_sha256(staging / name)
        for name in (EDITOR_TENSORS, PROTECTED_FILE)
        if (staging / name).is_file()
    }
    (staging / EDITOR_JSON).write_text(json.dumps(description, indent=2, default=float))
    if trainer is not None:
        _save_trainer_state(staging, trainer)
    _replace_directory(staging, directory)
    return directory


def export_editor(source: str | Path, target: str | Path) -> Path:
    """Copy just the editor (weights + description) out of a training checkpoint, for deployment."""
    source, target = Path(source), Path(target)
    read_description(source)
    target.mkdir(parents=True, exist_ok=True)
    for name in (EDITOR_TENSORS, EDITOR_JSON, PROTECTED_FILE):
        if (source / name).is_file():
            shutil.copyfile(source / name, target / name)
    return target


def read_description(directory: str | Path) -> dict[str, Any]:
    description = json.loads((Path(directory) / EDITOR_JSON).read_text())
    if description.get("format") != FORMAT:
        raise ValueError(f"{directory}: not a {FORMAT} checkpoint (format {description.get('format')!r})")
    # Editors saved before aggregation was a choice summed their edits.
    description["editor_config"].setdefault("aggregation", "sum")
    return description


def load_editor(
    directory: str | Path, *, base_fingerprint: str, device: str | torch.device = "cpu"
) -> MendEditor:
    """Load an editor for a base model; refuses a checkpoint trained for a different model, and one whose
    files do not match their recorded checksums."""
    directory = Path(directory)
    description = read_description(directory)
    if description["base_fingerprint"] != base_fingerprint:
        raise EditorMismatchError(
            f"{directory}: editor was trained for base model {description['base_fingerprint'][:12]}, "
            f"but this model is {base_fingerprint[:12]}; train an editor for this model (mend train-editor)"
        )
    verify_checksums(directory, description)
    layers = tuple(
        LayerInfo(**{**layer, "orientation": Orientation(layer["orientation"])})
        for layer in description["layers"]
    )
    network = MendNetwork(layers, EditorConfig.from_dict(description["editor_config"]))
    network.load_state_dict(load_file(directory / EDITOR_TENSORS))
    scope = EditScope(description["blocks_path"], description["first_block"], layers)
    protected = None
    if network.config.aggregation == "least_squares":
        protected = ProtectedKeys.load(directory, base_fingerprint=base_fingerprint)
    return MendEditor(network.to(device).eval(), scope, protected)


def _save_trainer_state(directory: Path, trainer: EditorTrainer) -> None:
    tensors: dict[str, torch.Tensor] = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["rng/cuda"] = torch.cuda.get_rng_state()
    optimizer = trainer.optimizer.state_dict()
    for index, state in optimizer["state"].items():
        for key, value in state.items():
            tensors[f"optimizer/{index}/{key}"] = torch.as_tensor(value)
    for name, value in (trainer.best_network or {}).items():
        tensors[f"best/{name}"] = value
    save_file(_contiguous(tensors), directory / STATE_TENSORS)
    state = {"trainer": asdict(trainer.state), "param_groups": optimizer["param_groups"]}
    (directory / STATE_JSON).write_text(json.dumps(state, indent=2, default=float))


def load_trainer_state(directory: str | Path, trainer: EditorTrainer) -> None:
    """Restore a trainer (built with the same data and config) to exactly where the checkpoint left it."""
    directory = Path(directory)
    from editing.training.trainer import TrainerState

    network = load_file(directory / EDITOR_TENSORS)
    trainer.network.load_state_dict(network)
    tensors = load_file(directory / STATE_TENSORS)
    saved = json.loads((directory / STATE_JSON).read_text())
    optimizer_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer/"):
            _, index, name = key.split("/", 2)
            optimizer_state.setdefault(int(index), {})[name] = (
                value.to(trainer.device) if name != "step" else value
            )
    trainer.optimizer.load_state_dict({"state": optimizer_state, "param_groups": saved["param_groups"]})
    best = {key.removeprefix("best/"): value for key, value in tensors.items() if key.startswith("best/")}
    trainer.best_network = best or None
    trainer.state = TrainerState(**saved["trainer"])
    torch.set_rng_state(tensors["rng/torch"])
    if "rng/cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng/cuda"])
