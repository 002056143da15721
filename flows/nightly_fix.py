"""The nightly fix: flagged predictions -> edit dataset -> editor -> edited candidate -> evaluation ->
gate -> registered candidate in MLflow. Composition only; every step is a task in ``tasks/``."""

from __future__ import annotations

import logging
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext

from flows.locks import ledger_lock
from tasks.apply import apply_task, update_key
from tasks.candidate import register_task
from tasks.dataset import assemble_task
from tasks.editor import find_editor_task
from tasks.evaluate import evaluate_task
from tasks.extract import extract_task
from tasks.gate import gate_task
from tasks.models import ensure_base_task
from tasks.progress import step_started
from tasks.report import metrics_task, params_task, track_task
from tasks.review import REVIEW_DIR, describe_task, review_task
from tasks.settings import FixSettings
from tasks.tracking import configure_tracking, fix_run

LOGGER = logging.getLogger(__name__)


@dataclass
class FixSummary:
    run_id: str
    mlflow_run_id: str = ""
    champion_version: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    edits_applied: int = 0
    gate_passed: bool | None = None  # None when there was nothing to gate
    gate: list[dict[str, Any]] = field(default_factory=list)
    candidate_version: str | None = None
    editor_uri: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    store_prefix: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _run_id() -> str:
    context = FlowRunContext.get()
    return str(context.flow_run.id) if context and context.flow_run else uuid.uuid4().hex


@flow(name="nightly-fix")
def nightly_fix(overrides: dict[str, Any] | None = None) -> FixSummary:
    """Turn pending flags into a gated candidate; a failing gate raises (and registers nothing)."""
    with ledger_lock():  # fix and promotion runs never overlap
        return _fix(overrides)


def _fix(overrides: dict[str, Any] | None) -> FixSummary:
    from flows.train_editor import train_editor_flow

    settings = FixSettings.from_env(**(overrides or {}))
    configure_tracking(settings.tracking_uri)
    run_id = _run_id()
    summary = FixSummary(run_id, store_prefix=f"runs/{run_id}")
    base = ensure_base_task(settings)
    summary.champion_version = base.champion_version
    with fix_run(run_name=f"fix-{summary.run_id[:8]}", tags={"mend.run_id": summary.run_id}) as mlflow_run_id:
        summary.mlflow_run_id = mlflow_run_id
        params_task(settings, mlflow_run_id, {"champion_version": base.champion_version, "editor": settings.editor,
                    "base_fingerprint": base.fingerprint, "thresholds": settings.thresholds().to_dict(),
                    "store": settings.store_uri, "edit_ridge_multiplier": settings.edit_ridge_multiplier,
                    "edit_protect_multiplier": settings.edit_protect_multiplier,
                    "edit_max_disturbance": settings.edit_max_disturbance,
                    "edit_neighbours": settings.edit_neighbours,
                    "edit_neighbour_weight": settings.edit_neighbour_weight,
                    "edit_substitutes": settings.edit_substitutes,
                    "edit_subject_free": settings.edit_subject_free, "edit_siblings": settings.edit_siblings,
                    "edit_substitute_min_probability": settings.edit_substitute_min_probability})  # fmt: skip
        extracted = extract_task(settings, summary.run_id, settings.registered_model)
        summary.counts = extracted.counts
        params_task(settings, mlflow_run_id, {"flags": extracted.counts})
        if not extracted.flag_ids:
            get_run_logger().info("no new flags: nothing to fix")
            track_task(settings, mlflow_run_id, {"quarantine": extracted.quarantine_key})
            return summary
        dataset = assemble_task(settings, summary.run_id, extracted.flags_key, base.champion_version)
        if settings.editor == "mend":
            summary.editor_uri = find_editor_task(settings, base.fingerprint)
            if summary.editor_uri is None:
                step_started(f"no MEND editor for this base model yet: training one first "
                             f"(budget {settings.editor_train_minutes:g} min)")  # fmt: skip
                summary.editor_uri = train_editor_flow(overrides=overrides)
        step_started(
            f"applying {len(extracted.flag_ids)} edit(s) with the {settings.editor} editor as one update"
        )
        snapshot = apply_task(
            settings,
            summary.run_id,
            dataset.dataset,
            summary.editor_uri,
            base.champion_version,
            extracted.flag_ids,
        )
        summary.edits_applied = len(extracted.flag_ids)
        evaluation = evaluate_task(
            settings, summary.run_id, dataset.dataset, dataset.retention, snapshot, base.champion_version
        )
        summary.summary = metrics_task(settings, mlflow_run_id, evaluation.summary)
        artifacts = {"dataset": [dataset.dataset, dataset.retention, dataset.metadata],
                     "evaluation": evaluation.prefix, "quarantine": extracted.quarantine_key,
                     "update": update_key(summary.run_id)}  # fmt: skip
        review = {"champion_version": base.champion_version, "editor": settings.editor,
                  "editor_uri": summary.editor_uri, "counts": extracted.counts, "mlflow_run_id": mlflow_run_id}  # fmt: skip
        try:
            verdict = gate_task(settings, summary.run_id, evaluation, extracted.new_flag_ids)
        finally:  # the gate's result, Data Docs and the review page are logged whether it passed or not
            artifacts[REVIEW_DIR] = review_task(settings, summary.run_id, review)
            track_task(settings, mlflow_run_id, {**artifacts, "gate": f"runs/{summary.run_id}/gate"})
        summary.gate_passed, summary.gate = verdict.passed, verdict.outcomes
        summary.candidate_version = register_task(
            settings, summary.run_id, mlflow_run_id, snapshot, base.champion_version,
            extracted.new_flag_ids, extracted.carried_flag_ids,
        )  # fmt: skip
        describe_task(settings, summary.candidate_version, summary.run_id)
    return summary
