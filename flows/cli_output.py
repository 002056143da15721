"""Rendering for the ``mend`` command line (rich tables and progress); no editing logic lives here."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console()

AGGREGATE_COLUMNS = (
    "rewrite_acc",
    "rephrase_acc",
    "locality_unchanged",
    "locality_kl",
    "portability_acc",
    "score",
)


def _format(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def format_against(observed: Any, threshold: Any) -> tuple[str, str]:
    """``observed`` and ``threshold`` with enough digits to tell them apart: a locality of 0.9496 against
    0.95 reads "0.9496" / "0.9500", not a failed "0.950" beside a required "0.950"."""
    if not (isinstance(observed, float) and isinstance(threshold, float)) or observed == threshold:
        return _format(observed), _format(threshold)
    for digits in range(3, 8):
        shown = f"{observed:.{digits}f}", f"{threshold:.{digits}f}"
        if shown[0] != shown[1]:
            return shown
    return shown


def print_edit_report(evaluation, *, title: str, max_rows: int = 20) -> None:
    """Per-record before/after predictions, then the aggregate metrics."""
    table = Table(title=title, show_lines=False)
    for column in ("record", "prompt", "target", "before", "after", "rewrite", "rephrase", "locality"):
        table.add_column(column, overflow="fold")
    for row in evaluation.rows[:max_rows]:
        table.add_row(
            row["record_id"],
            row["prompt"],
            row["target_new"],
            row.get("prediction_before", ""),
            row.get("prediction_after", ""),
            _format(row["rewrite_acc"]),
            _format(row["rephrase_acc"]),
            _format(row["locality_unchanged"]),
        )
    console.print(table)
    if len(evaluation.rows) > max_rows:
        console.print(f"... {len(evaluation.rows) - max_rows} more rows")
    summary = Table(title="aggregates (mean over records)")
    for column in AGGREGATE_COLUMNS:
        summary.add_column(column)
    summary.add_row(*(_format(evaluation.aggregates.get(column)) for column in AGGREGATE_COLUMNS))
    console.print(summary)


def train_with_progress(data, out, model, max_minutes, max_steps, val_records, limit, resume, config_path):
    """Read the data, train with a progress bar, return the trainer summary."""
    from editing.config import EditorConfig, TrainConfig
    from editing.core.models import load_model
    from editing.data.records import read_records
    from editing.training.run import split_records, train_editor

    overrides = json.loads(Path(config_path).read_text()) if config_path else {}
    train_config = TrainConfig.from_dict(
        {
            **overrides.get("train", {}),
            "max_steps": max_steps,
            "max_minutes": max_minutes,
            "val_records": val_records,
        }
    )
    editor_config = EditorConfig.from_dict(overrides.get("editor", {}))
    records = [record for path in data for record in read_records(path, limit=limit).records]
    train_records, held_out = split_records(records, val_records, train_config.seed)
    loaded = load_model(model)
    protected = None
    if editor_config.aggregation == "least_squares":
        from tasks.protected import cached_protected_keys

        data_dir = os.environ.get("MEND_DATA_DIR", str(Path.cwd().parent / "shared" / "data"))
        exclude = [prompt for record in records for prompt in (record.prompt, *record.rephrase_prompts)]
        protected = cached_protected_keys(loaded, data_dir, 300, 1000, exclude)
    columns = (
        TextColumn("training editor"),
        BarColumn(),
        TextColumn("step {task.completed}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("train", total=max_steps)
        run = train_editor(
            loaded, train_records, held_out, out, train_config=train_config, editor_config=editor_config,
            resume=resume, protected=protected,
            on_progress=lambda step, _total: progress.update(task, completed=step),
        )  # fmt: skip
    return {"checkpoint": str(run.checkpoint_dir), **run.summary}


def print_training_summary(summary: dict[str, Any]) -> None:
    validations = summary.get("validations", [])
    table = Table(title=f"editor training: {summary['step']} steps, stopped by {summary['stop_reason']}")
    for column in ("step", "loss", "rewrite_acc", "rephrase_acc", "locality_unchanged"):
        table.add_column(column)
    for row in validations:
        table.add_row(
            *(
                _format(row.get(column))
                for column in ("step", "loss", "rewrite_acc", "rephrase_acc", "locality_unchanged")
            )
        )
    console.print(table)
    console.print(f"checkpoint: {summary['checkpoint']}  (best step {summary['best_step']})")


def print_seed(seeded) -> None:
    if seeded.already_seeded:
        console.print(
            f"demo flags: already seeded ({seeded.wrong} of {seeded.asked} questions were answered wrongly)"
        )
        return
    console.print(f"demo flags: asked {seeded.asked} questions, flagged {seeded.wrong} wrong answers, e.g.")
    for example in seeded.examples:
        console.print(
            f"  {example['prompt']!r} -> {example['answer']!r} (correction: {example['correction']!r})"
        )


def print_fix_summary(outcome) -> None:
    """What a fix run did: flags consumed, edits applied, the gate, and where to look in MLflow."""
    from tasks.tracking import configure_tracking

    settings, summary = outcome.settings, outcome.summary
    counts = summary.counts if summary else {}
    if summary and summary.gate_passed is None:
        console.print(f"fix run {outcome.run_id}: no new flags ({_counts(counts)}); nothing to fix")
        return
    if counts:
        console.print(f"flags: {_counts(counts)}")
    evaluation = outcome.evaluation or {}
    console.print(f"edits applied: {evaluation.get('edits', summary.edits_applied if summary else '?')} "
                  f"(editor {settings.editor}{', ' + summary.editor_uri if summary and summary.editor_uri else ''})")  # fmt: skip
    if summary and summary.editor_uri:
        _print_editor(settings, summary.editor_uri)
    from flows.cli_review import gate_table

    console.print(gate_table(outcome.gate, f"gate: {'PASSED' if not outcome.gate_failed else 'FAILED'}"))
    uri = configure_tracking(settings.tracking_uri)
    if summary and summary.candidate_version:
        console.print(f"registered {settings.registered_model} version {summary.candidate_version} as 'candidate'; "
                      f"review it with: mend review --version {summary.candidate_version}; "
                      f"approve and promote with: mend promote --version {summary.candidate_version} --approve --approver YOU")  # fmt: skip
        from tasks.review import version_page

        console.print(f"version page: {version_page(settings, summary.candidate_version)}", soft_wrap=True)
    run = outcome.mlflow_run_id or "(see the fix-run in experiment mend-fix)"
    console.print(f"MLflow: tracking {uri}, run {run}", soft_wrap=True)
    if not uri.startswith(("http://", "https://")):
        console.print(f"open the MLflow UI: mlflow ui --backend-store-uri {uri}", soft_wrap=True)


def _print_editor(settings, editor_uri: str) -> None:
    """The editor's training at a glance: steps, throughput and its best validation."""
    from tasks.editor import EDITOR_URI_PREFIX
    from tasks.editor_registry import EDITOR_MODEL_NAME
    from tasks.registry import registry_client

    version = registry_client(settings.tracking_uri).get_model_version(
        EDITOR_MODEL_NAME, editor_uri.removeprefix(EDITOR_URI_PREFIX)
    )
    metric = {k.removeprefix("metric."): v for k, v in version.tags.items() if k.startswith("metric.")}
    if "steps" not in metric:
        return
    single = " / ".join(
        _format(float(metric.get(f"best_{m}", "nan")))
        for m in ("rewrite_acc", "rephrase_acc", "locality_unchanged")
    )
    group = " / ".join(
        _format(float(metric.get(f"best_group/{m}", "nan")))
        for m in ("rewrite_acc", "rephrase_acc", "locality_unchanged")
    )
    console.print(f"editor: {int(float(metric['steps']))} training steps in {float(metric['train_seconds']) / 60:.1f} min "
                  f"({float(metric['steps_per_second']):.2f} steps/s); validation rewrite / rephrase / locality: "
                  f"single edits {single}, same-relation groups {group}")  # fmt: skip


def _counts(counts: dict) -> str:
    return ", ".join(f"{name} {value}" for name, value in counts.items())
