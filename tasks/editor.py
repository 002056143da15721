"""The editor for a base model: found in the MLflow registry by the base model's fingerprint, or
trained (by the ``train_editor`` flow) and registered when none exists yet."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from prefect import task

from tasks.settings import FixSettings

LOGGER = logging.getLogger(__name__)
EDITOR_URI_PREFIX = "models:/mend-editor/"


def find_editor_uri(settings: FixSettings, base_fingerprint: str) -> str | None:
    """``models:/mend-editor/<version>`` of the latest editor for this base, or None."""
    from tasks.editor_registry import find_editor

    found = find_editor(base_fingerprint, tracking_uri=settings.tracking_uri)
    return None if found is None else f"{EDITOR_URI_PREFIX}{found[0]}"


def editor_checkpoint(settings: FixSettings, editor_uri: str) -> Path:
    """A local copy of the editor checkpoint behind ``editor_uri`` (cached under ``$MEND_HOME``)."""
    from editing.training.checkpoint import read_description
    from tasks.editor_registry import editor_checkpoint as download

    if not editor_uri.startswith(EDITOR_URI_PREFIX):
        raise ValueError(f"not an editor URI: {editor_uri!r} (expected {EDITOR_URI_PREFIX}<version>)")
    directory = download(editor_uri.removeprefix(EDITOR_URI_PREFIX), tracking_uri=settings.tracking_uri)
    read_description(directory)  # a readable checkpoint, or a clear error now rather than mid-edit
    return directory


def general_texts(settings: FixSettings, count: int) -> list[str]:
    """ME-PPL sentences for the editor's general-text term, none of them among the gate's reference
    texts (ME-PPL_1k): training must not see what the perplexity check scores."""
    from editing.data.protected_sources import training_texts

    return training_texts(settings.data_dir, count)


def train_and_register(settings: FixSettings) -> tuple[str, dict[str, Any]]:
    """Train a MEND editor for the base model on CounterFact train and register it; returns its URI."""
    import torch

    from editing.config import RECIPE_EDITOR_LR, RECIPE_EDITOR_SETTINGS, EditorConfig, TrainConfig
    from editing.core.models import load_model
    from editing.data.records import read_records
    from editing.training.checkpoint import export_editor
    from editing.training.run import split_records, train_editor
    from tasks.editor_registry import register_editor
    from tasks.models import base_location, scratch_dir
    from tasks.progress import Progress, training_callbacks
    from tasks.protected import protected_keys_for, store_scored_prompts
    from tasks.tracking import configure_tracking, fix_run, log_params, metrics_callback

    configure_tracking(settings.tracking_uri)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded = load_model(base_location(settings), device=device)
    path = settings.data_file("counterfact_easyedit_splits/counterfact-train.json")
    records = read_records(path, limit=settings.editor_train_records).records
    train, held_out = split_records(records, min(100, len(records) // 10), seed=0)
    config = TrainConfig(
        max_minutes=settings.editor_train_minutes, max_steps=settings.editor_train_steps, device=device,
        val_every=200, val_records=len(held_out), group_sizes=settings.group_sizes(),
        same_relation_fraction=settings.editor_same_relation, editor_lr=RECIPE_EDITOR_LR,
        locality_loss_weight=settings.editor_locality_weight,
        general_text_loss_weight=settings.editor_general_text_weight,
        general_text_every=settings.editor_general_text_every, lr_schedule=settings.editor_lr_schedule,
    )  # fmt: skip
    editor_config = EditorConfig(aggregation=settings.editor_aggregation, **RECIPE_EDITOR_SETTINGS)
    protected = None
    if editor_config.aggregation == "least_squares":
        exclude = [p for r in records for p in (r.prompt, *r.rephrase_prompts)]
        protected = protected_keys_for(
            settings, loaded, exclude + store_scored_prompts(settings.open_store())
        )
    out = scratch_dir("editor") / "editor"
    started = time.perf_counter()
    with fix_run(
        "mend-editor-training", run_name="train-editor", tags={"base_fingerprint": loaded.fingerprint}
    ) as run_id:
        log_params({"device": device, "train_records": len(train), **config.to_dict(),
                    **{f"editor_{k}": v for k, v in editor_config.to_dict().items()}}, run_id=run_id)  # fmt: skip
        # A line every 30 s and one at each validation: minutes of training in a screenful of lines.
        progress = Progress("training the editor", None if config.max_minutes else config.max_steps,
                            unit="step", budget_seconds=(config.max_minutes or 0) * 60 or None,
                            every_seconds=30)  # fmt: skip
        on_metrics, on_progress = training_callbacks(progress, metrics_callback(run_id=run_id))
        run = train_editor(
            loaded, train, held_out, out, train_config=config, editor_config=editor_config,
            on_metrics=on_metrics, on_progress=on_progress, protected=protected,
            general_texts=general_texts(settings, len(records)) if config.general_text_loss_weight else (),
        )  # fmt: skip
        progress.finish(steps=run.summary["step"])
        best = next((v for v in run.summary["validations"] if v["step"] == run.summary["best_step"]), None)
        metrics = {f"best_{name}": value for name, value in (best or {}).items()}
        metrics["train_seconds"] = time.perf_counter() - started
        metrics.update(steps=run.summary["step"], steps_per_second=run.summary["steps_per_second"])
        # Only the editor itself is registered; optimizer state stays behind with the training run.
        exported = export_editor(out, out.parent / "export")
        version = register_editor(
            exported, loaded.fingerprint, metrics, run_id, tracking_uri=settings.tracking_uri
        )
    LOGGER.info("trained editor version %s in %.0f s", version, metrics["train_seconds"])
    return f"{EDITOR_URI_PREFIX}{version}", metrics


@task(name="find-editor")
def find_editor_task(settings: FixSettings, base_fingerprint: str) -> str | None:
    return find_editor_uri(settings, base_fingerprint)
