"""Editor training under torchrun: two CPU processes (gloo, DistributedDataParallel) train the same editor as
one process computing the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from editing.config import EditorConfig, TrainConfig
from editing.core.models import load_model
from editing.data.records import read_records
from editing.training.checkpoint import EDITOR_JSON, EDITOR_TENSORS
from editing.training.run import split_records, train_editor
from tests.paths import DATA_DIR
from tests.tiny import tiny_protected

ROOT = Path(__file__).resolve().parents[2]
RECORDS = DATA_DIR / "counterfact_easyedit_splits/counterfact-train.json"
LIMIT, VAL_COUNT = 48, 8
# Groups of 1 and 2 edits, two draws per step (one per process), two validations on the way; float32.
TRAIN = TrainConfig(
    batch_size=4, batch_shards=2, group_sizes=(1, 2), same_relation_fraction=0.5, editor_lr=1e-3,
    step_size_lr=1e-3, max_steps=6, val_every=3, val_records=8, val_group_size=4, bf16_autocast=False,
    device="cpu",
)  # fmt: skip
EDITOR = EditorConfig(init_step_size=1e-3)


@pytest.fixture(scope="module")
def saved_inputs(tmp_path_factory, tiny_llama, tiny_base_dir):
    """The tiny model as a safetensors directory, its protected keys and the configs, for torchrun."""
    directory = tmp_path_factory.mktemp("distributed")
    (directory / "model").symlink_to(tiny_base_dir)
    tiny_protected(tiny_llama).save(directory)
    (directory / "train.json").write_text(json.dumps(TRAIN.to_dict()))
    (directory / "editor.json").write_text(json.dumps(EDITOR.to_dict()))
    return directory


def _single_process(inputs: Path, out: Path) -> None:
    from editing.mend.protected import ProtectedKeys

    loaded = load_model(inputs / "model")
    records = read_records(RECORDS, limit=LIMIT).records
    train, val = split_records(records, VAL_COUNT, TRAIN.seed)
    protected = ProtectedKeys.load(inputs, base_fingerprint=loaded.fingerprint)
    train_editor(loaded, train, val, out, train_config=TRAIN, editor_config=EDITOR, protected=protected)


def _torchrun(inputs: Path, out: Path, processes: int, train_config: str = "train.json"):
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
        "-m", "editing.training.distributed", "--model", str(inputs / "model"), "--records", str(RECORDS),
        "--limit", str(LIMIT), "--val-count", str(VAL_COUNT), "--out", str(out),
        "--train-config", str(inputs / train_config), "--editor-config", str(inputs / "editor.json"),
        "--protected", str(inputs),
    ]  # fmt: skip
    # One thread per process: the two processes share the machine's cores.
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=600)


def test_two_processes_train_the_editor_one_process_trains(saved_inputs, tmp_path):
    _single_process(saved_inputs, tmp_path / "single")
    finished = _torchrun(saved_inputs, tmp_path / "ddp", processes=2)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    assert "2 processes (gloo)" in finished.stderr

    single = load_file(tmp_path / "single" / EDITOR_TENSORS)
    parallel = load_file(tmp_path / "ddp" / EDITOR_TENSORS)
    assert single.keys() == parallel.keys()
    for name in single:
        torch.testing.assert_close(parallel[name], single[name], rtol=1e-4, atol=1e-6, msg=name)
    # Training moved the editor (so the equality is not that of two untouched networks), and both ran
    # the same steps with the same validations.
    assert any("up.weight" in name and single[name].abs().max() > 0 for name in single)
    assert any("normalizer.count" in name and single[name] > 0 for name in single)
    described = [json.loads((tmp_path / run / EDITOR_JSON).read_text()) for run in ("single", "ddp")]
    metrics = [d["metrics"] for d in described]
    assert metrics[0]["step"] == metrics[1]["step"] == TRAIN.max_steps
    assert metrics[0]["best_step"] == metrics[1]["best_step"]
    assert metrics[1]["best"]["score"] == pytest.approx(metrics[0]["best"]["score"], abs=1e-6)


def test_a_global_batch_that_does_not_share_out_evenly_is_refused(saved_inputs, tmp_path):
    uneven = saved_inputs / "train-uneven.json"
    uneven.write_text(json.dumps(TrainConfig(**{**TRAIN.to_dict(), "batch_shards": 3}).to_dict()))
    finished = _torchrun(saved_inputs, tmp_path / "ddp", processes=2, train_config=uneven.name)
    assert finished.returncode != 0
    assert "batch_shards (3) must be a multiple of the number of processes (2)" in finished.stderr
    assert not (tmp_path / "ddp" / EDITOR_TENSORS).exists()  # refused before any training
