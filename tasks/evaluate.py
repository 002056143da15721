"""Evaluate a candidate against the champion it was derived from: the per-edit table the gate judges,
perplexity on reference text, retention of earlier promoted edits, locality regressions, and plots."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task

from editing.data.edit_record import SAME_SUBJECT_KINDS
from editing.data.records import read_records, read_texts
from editing.evaluation.evaluate import evaluate_edit, perplexity
from tasks.models import download_dir, load_version, scratch_dir, upload_dir
from tasks.progress import Progress
from tasks.settings import FixSettings

LOGGER = logging.getLogger(__name__)
REFERENCE_TEXTS = "me_ppl/ME-PPL_1k.json"


@dataclass(frozen=True)
class EvaluationKeys:
    prefix: str  # store prefix holding everything below
    table: str  # per-edit table (JSON rows) in the gate's columns
    summary: str  # perplexities, retention, aggregates
    regressions: str  # CSV of locality prompts whose answer changed


REGRESSION_COLUMNS = ("edit", "prompt", "kind", "before", "after", "champion_odds", "near_tie", "gate_cost")
# The gate's locality columns (``gate_rows``), each judged on its mean over the records that have it.
NEIGHBOUR_COLUMN, SAME_SUBJECT_COLUMN = "locality_unchanged", "locality_same_subject"


def gate_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The evaluation rows in the gate's vocabulary (edit = rewrite, paraphrase = rephrase)."""
    return [
        {
            "record_id": row["record_id"],
            "prompt": row["prompt"],
            "correction": row["target_new"],
            "edit_success": row["rewrite_acc"],
            "paraphrase_success": row["rephrase_acc"],
            # Neighbour probes (other subjects) where the edit has any, as before same-subject probes
            # existed; the edited subject's other facts are judged apart.
            "locality_unchanged": _first_known(row.get("locality_neighbour"), row["locality_unchanged"]),
            "locality_same_subject": row.get("locality_same_subject"),
            "locality_kl": row["locality_kl"],
            "prediction_before": row.get("prediction_before", ""),
            "prediction_after": row.get("prediction", ""),
        }
        for row in rows
    ]


def _first_known(*values):
    return next((value for value in values if value is not None), None)


def locality_costs(records, probe_changes: dict[str, list[float]]) -> dict[tuple[str, int], dict[str, float]]:
    """Per (record id, probe index), how much the probe's change lowers each gate locality column's mean:
    its changed fraction (``editing.evaluation.evaluate.probe_changes``) over the probes the record
    counts in that column, over the records the column has (``gate_rows``: a record's neighbour probes, or
    all its probes where it has none of them; and its same-subject probes). The costs of a column add up
    to one minus its observed mean."""
    counted: dict[str, list[tuple[str, list[int]]]] = {NEIGHBOUR_COLUMN: [], SAME_SUBJECT_COLUMN: []}
    for record in records:
        same = [i for i, probe in enumerate(record.locality) if probe.kind in SAME_SUBJECT_KINDS]
        other = [i for i in range(len(record.locality)) if i not in same]
        for column, chosen in ((NEIGHBOUR_COLUMN, other or same), (SAME_SUBJECT_COLUMN, same)):
            if chosen:
                counted[column].append((record.record_id, chosen))
    costs: dict[tuple[str, int], dict[str, float]] = {}
    for column, members in counted.items():
        for record_id, chosen in members:
            changes = probe_changes.get(record_id, [])
            for index in chosen:
                if index < len(changes) and changes[index] > 0:
                    share = changes[index] / len(chosen) / len(members)
                    costs.setdefault((record_id, index), {})[column] = share
    return costs


def _own_cost(costs, record_id: str, index: int, kind: str) -> float:
    """A probe's cost in the column of its own kind (same-subject probes: the same-subject column)."""
    column = SAME_SUBJECT_COLUMN if kind in SAME_SUBJECT_KINDS else NEIGHBOUR_COLUMN
    return round(costs.get((record_id, index), {}).get(column, 0.0), 5)


def locality_regressions(
    before_model,
    after_model,
    tokenizer,
    records,
    costs: dict[tuple[str, int], dict[str, float]] | None = None,
) -> list[dict[str, Any]]:
    """Every locality prompt whose greedy answer changed: prompt, before, after, the edit it sat beside,
    the champion's odds where the answers part (``editing.evaluation.divergence``: near tie or knowledge)
    and ``gate_cost``, what it takes off its gate column's mean (``locality_costs``; 0 where the change
    lies past the answer the gate scores)."""
    from editing.core.generate import greedy_complete
    from editing.evaluation.answers import answer_changed
    from editing.evaluation.divergence import divergence_odds, near_tie

    probes = [
        (record.record_id, index, probe) for record in records for index, probe in enumerate(record.locality)
    ]
    prompts = [probe.prompt for _, _, probe in probes]
    if not prompts:
        return []
    before = greedy_complete(before_model, tokenizer, prompts)
    after = greedy_complete(after_model, tokenizer, prompts)
    changed = [
        {"edit": edit_id, "prompt": probe.prompt, "kind": probe.kind, "before": old, "after": new,
         "gate_cost": _own_cost(costs or {}, edit_id, index, probe.kind)}
        for (edit_id, index, probe), old, new in zip(probes, before, after, strict=True)
        if answer_changed(old, new)
    ]  # fmt: skip
    for row in changed:
        odds = divergence_odds(before_model, tokenizer, row["prompt"], row["before"], row["after"])
        row["champion_odds"] = "" if odds is None else f"{odds:.3g}"
        # Empty where the answers do not part (one stops where the other goes on): no odds to weigh.
        row["near_tie"] = "" if odds is None else "yes" if near_tie(odds) else "no"
    return changed


def neighbour_cost_summary(regressions: list[dict[str, Any]], costs) -> dict[str, Any]:
    """What the changed probes take off the gate's neighbour locality (``locality_costs``): in all, through
    near ties, and the three costliest changes, each summed over the edits it was a probe of."""
    total = sum(cost.get(NEIGHBOUR_COLUMN, 0.0) for cost in costs.values())
    neighbours = [row for row in regressions if row["gate_cost"] and row["kind"] not in SAME_SUBJECT_KINDS]
    # Rows carry rounded costs: their sum may pass the exact total by a rounding step.
    near = min(sum(row["gate_cost"] for row in neighbours if row["near_tie"] == "yes"), total)
    changes: dict[tuple[str, str, str], dict[str, Any]] = {}
    for row in neighbours:  # one pool prompt may be a probe of several edits
        change = changes.setdefault((row["prompt"], row["before"], row["after"]), {
            **{key: row[key] for key in ("prompt", "before", "after", "champion_odds")}, "gate_cost": 0.0, "edits": 0,
        })  # fmt: skip
        change["gate_cost"] = round(change["gate_cost"] + row["gate_cost"], 5)
        change["edits"] += 1
    largest = sorted(changes.values(), key=lambda change: change["gate_cost"], reverse=True)[:3]
    return {"total": round(total, 5), "near_ties": round(near, 5), "other": round(total - near, 5),
            "largest": largest}  # fmt: skip


def greedy_answers(before_model, after_model, tokenizer, records) -> dict[str, dict[str, Any]]:
    """What a reviewer reads next to the teacher-forced scores: each edit prompt's greedy answer before and
    after, and each paraphrase's answer after, with whether it gives the correction (or an alias)."""
    from editing.core.generate import answer_matches, greedy_complete

    def gives(answer: str, record) -> bool:
        return any(answer_matches(answer, target) for target in record.targets)

    prompts = [record.prompt for record in records]
    pairs = [(record, prompt) for record in records for prompt in record.rephrase_prompts]
    before = greedy_complete(before_model, tokenizer, prompts) if prompts else []
    after = (
        greedy_complete(after_model, tokenizer, prompts + [prompt for _, prompt in pairs]) if prompts else []
    )
    found = {
        record.record_id: {"before": old, "after": new, "correct": gives(new, record), "paraphrases": []}
        for record, old, new in zip(records, before, after[: len(prompts)], strict=True)
    }
    for (record, prompt), answer in zip(pairs, after[len(prompts) :], strict=True):
        found[record.record_id]["paraphrases"].append(
            {"prompt": prompt, "answer": answer, "correct": gives(answer, record)}
        )
    return found


def _plots(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [row["record_id"][:10] for row in rows]
    paths = []
    figure, axis = plt.subplots(figsize=(max(6, len(rows) * 0.35), 3.2))
    axis.bar(names, [row["edit_success"] for row in rows], label="edit")
    axis.plot(names, [row["paraphrase_success"] or 0 for row in rows], "o", color="black", label="paraphrase")
    axis.set_ylim(0, 1.05), axis.set_ylabel("success"), axis.legend(fontsize=8)
    axis.tick_params(axis="x", rotation=90, labelsize=6)
    figure.tight_layout(), figure.savefig(out / "edit_success.png", dpi=110), plt.close(figure)
    paths.append(out / "edit_success.png")
    figure, axis = plt.subplots(figsize=(max(6, len(rows) * 0.35), 3.2))
    axis.bar(names, [1 - (row["locality_unchanged"] or 0) for row in rows], color="tab:red")
    axis.set_ylabel("locality changed (fraction)"), axis.set_ylim(0, 1.05)
    axis.tick_params(axis="x", rotation=90, labelsize=6)
    figure.tight_layout(), figure.savefig(out / "locality_change.png", dpi=110), plt.close(figure)
    paths.append(out / "locality_change.png")
    return paths


def evaluate_candidate(
    settings: FixSettings,
    run_id: str,
    dataset_key: str,
    retention_key: str,
    snapshot_prefix: str,
    champion_version: str,
) -> EvaluationKeys:
    from tasks.mlflow_flavor import load_snapshot_model

    store = settings.open_store()
    workspace = scratch_dir(run_id)
    store.download(dataset_key, workspace / "edit_dataset.jsonl")
    store.download(retention_key, workspace / "retention.jsonl")
    records = read_records(workspace / "edit_dataset.jsonl", "jsonl").records
    retained = read_records(workspace / "retention.jsonl", "jsonl").records
    before = load_version(settings, champion_version).loaded
    after = load_snapshot_model(download_dir(store, snapshot_prefix, workspace / "snapshot"))
    tokenizer = before.tokenizer

    progress = Progress("evaluating the candidate", 5, unit="part", every_seconds=0.0)
    progress.update(0, next="edits, paraphrases and locality")
    evaluation = evaluate_edit(before.model, after.model, tokenizer, records)
    rows = gate_rows(evaluation.rows)
    progress.update(1, next="retention of promoted edits")
    texts = read_texts(settings.data_file(REFERENCE_TEXTS), limit=settings.reference_texts)
    retention = evaluate_edit(before.model, after.model, tokenizer, retained).aggregates if retained else {}
    progress.update(2, next="perplexity on reference text")
    summary = {
        "perplexity_before": perplexity(before.model, tokenizer, texts),
        "perplexity_after": perplexity(after.model, tokenizer, texts),
        "retention": retention.get("rewrite_acc"),
        "retained_edits": len(retained),
        "aggregates": evaluation.aggregates,
        "edits": len(records),
    }
    progress.update(3, next="locality answers before and after")
    costs = locality_costs(records, evaluation.probe_changes)
    regressions = locality_regressions(before.model, after.model, tokenizer, records, costs)
    summary["neighbour_locality_cost"] = neighbour_cost_summary(regressions, costs)
    summary["locality_regressions"] = len(regressions)
    summary["same_subject_regressions"] = sum(r["kind"] == "same_subject" for r in regressions)
    summary["near_tie_regressions"] = sum(r["near_tie"] == "yes" for r in regressions)
    progress.update(4, next="greedy answers to the prompts and paraphrases")
    answers = greedy_answers(before.model, after.model, tokenizer, records)
    progress.finish()

    out = workspace / "evaluation"
    out.mkdir()
    (out / "per_edit.json").write_text(json.dumps(rows, indent=2))
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    (out / "answers.json").write_text(json.dumps(answers, indent=2))
    _write_csv(out / "locality_regressions.csv", regressions, REGRESSION_COLUMNS)
    _write_csv(out / "per_edit.csv", rows, tuple(rows[0]) if rows else ("record_id",))
    _plots(rows, out)
    prefix = upload_dir(store, out, f"runs/{run_id}/evaluation")
    LOGGER.info("evaluated %d edits: %s", len(records), evaluation.aggregates)
    return EvaluationKeys(
        prefix, f"{prefix}/per_edit.json", f"{prefix}/summary.json", f"{prefix}/locality_regressions.csv"
    )


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    import csv

    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


@task(name="evaluate-candidate")
def evaluate_task(
    settings: FixSettings,
    run_id: str,
    dataset_key: str,
    retention_key: str,
    snapshot_prefix: str,
    champion_version: str,
) -> EvaluationKeys:
    return evaluate_candidate(settings, run_id, dataset_key, retention_key, snapshot_prefix, champion_version)
