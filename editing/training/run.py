"""Train an editor for a base model from edit records, end to end (used by the CLI and the pipeline)."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from editing.config import EditorConfig, TrainConfig
from editing.core.models import LoadedModel
from editing.core.targets import resolve_scope
from editing.data.records import EditRecord
from editing.data.training_data import TrainingExample, encode_training_examples, with_general_texts
from editing.mend.editor import MendEditor
from editing.mend.editor_net import MendNetwork
from editing.mend.protected import ProtectedKeys
from editing.training.checkpoint import load_trainer_state, save_editor
from editing.training.trainer import EditorTrainer, MetricsCallback

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingRun:
    checkpoint_dir: Path
    summary: dict[str, Any]


def split_records(
    records: Sequence[EditRecord], val_count: int, seed: int
) -> tuple[list[EditRecord], list[EditRecord]]:
    """Hold out ``val_count`` records (chosen with ``seed``) for validation."""
    if len(records) <= val_count:
        raise ValueError(f"need more than {val_count} records to hold out {val_count} for validation")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    val = [records[i] for i in order[:val_count]]
    train = [records[i] for i in order[val_count:]]
    return train, val


def train_editor(
    loaded: LoadedModel,
    train_records: Sequence[EditRecord],
    val_records: Sequence[EditRecord],
    out_dir: str | Path,
    *,
    train_config: TrainConfig = TrainConfig(),
    editor_config: EditorConfig = EditorConfig(),
    resume: bool = False,
    general_texts: Sequence[str] = (),
    protected: ProtectedKeys | None = None,
    on_metrics: MetricsCallback | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    trainer_class: type[EditorTrainer] = EditorTrainer,
    writes_checkpoints: bool = True,
) -> TrainingRun:
    """Train (or resume) a MEND editor for ``loaded`` and save it to ``out_dir`` after each validation.

    ``general_texts`` (needed when ``train_config.general_text_loss_weight`` > 0) are paired with the
    examples, training ones first and validation ones after them. ``protected`` (the base model's
    protected keys, ``editing.mend.protected``) is needed for least-squares aggregation and is saved
    beside the editor. ``trainer_class`` and ``writes_checkpoints`` let torchrun's processes train
    together (``editing.training.distributed``: only the first process writes).
    """
    out_dir = Path(out_dir)
    scope = resolve_scope(loaded.model)
    torch.manual_seed(train_config.seed)
    network = MendNetwork(scope.layers, editor_config)
    trainer = trainer_class(
        loaded.model,
        loaded.tokenizer,
        scope,
        network,
        *_encode(loaded.tokenizer, train_records, val_records, train_config, general_texts),
        train_config,
        on_metrics=on_metrics,
        on_progress=on_progress,
        protected=protected,
    )
    if resume and (out_dir / "trainer_state.json").is_file():
        load_trainer_state(out_dir, trainer)
        trainer.state.stop_reason = ""
        LOGGER.info("resumed from %s at step %d", out_dir, trainer.state.step)

    def checkpoint(current: EditorTrainer) -> None:
        if not writes_checkpoints:
            return
        save_editor(
            out_dir,
            MendEditor(current.network, scope, protected),
            base_fingerprint=loaded.fingerprint,
            model_type=loaded.model.config.model_type,
            metrics=_final_metrics(current),
            train_config=train_config.to_dict(),
            trainer=current,
        )

    trainer.fit(on_checkpoint=checkpoint)
    checkpoint(trainer)  # the best network, now loaded into the trainer
    return TrainingRun(out_dir, trainer.summary())


def _encode(
    tokenizer,
    train_records: Sequence[EditRecord],
    val_records: Sequence[EditRecord],
    config: TrainConfig,
    general_texts: Sequence[str],
) -> tuple[list[TrainingExample], list[TrainingExample]]:
    train = encode_training_examples(tokenizer, train_records)
    val = encode_training_examples(tokenizer, val_records)
    if config.general_text_loss_weight == 0:
        return train, val
    if not general_texts:
        raise ValueError("general_text_loss_weight > 0 needs general_texts to train on")
    # Validation pairs with the texts after the training ones, or reuses them when there are no more.
    val_texts = general_texts[len(train) :] or general_texts
    return with_general_texts(tokenizer, train, general_texts), with_general_texts(tokenizer, val, val_texts)


def _final_metrics(trainer: EditorTrainer) -> dict[str, Any]:
    best = next((v for v in trainer.state.validations if v["step"] == trainer.state.best_step), {})
    return {
        "step": trainer.state.step,
        "best_step": trainer.state.best_step,
        "stop_reason": trainer.state.stop_reason,
        "elapsed_seconds": trainer.state.elapsed_seconds,
        "untrained": trainer.state.validations[0] if trainer.state.validations else {},
        "best": best,
        "train_examples": len(trainer.train_examples),
        "val_examples": len(trainer.val_examples),
    }
