"""The approver's view of a fix run: one review (JSON for the command line, a self-contained HTML page for
the MLflow UI) holding everything a person needs to approve or refuse the candidate without downloading
anything: the gate verdict, every edit with its flag, paraphrases and locality, the locality regressions,
retention, perplexity and the plots.

The review is built from what the run already stored (evaluation, gate, flags), written beside them in the
store and logged to the MLflow run under ``review/``; a registered candidate's description (Markdown, which
the version page renders) carries the verdict and a link to the page.
"""

from __future__ import annotations

import base64
import csv
import io
import logging
import os
from typing import Any

from prefect import task

from tasks.settings import FixSettings

LOGGER = logging.getLogger(__name__)

REVIEW_DIR = "review"  # artifact path in the MLflow run, folder in the store's run folder
REVIEW_JSON = "review.json"
REVIEW_HTML = "review.html"
UI_URL_ENV = "MEND_MLFLOW_UI_URL"  # where people open the MLflow UI, when it is not the tracking URI
DEFAULT_UI_URL = "http://127.0.0.1:5000"  # `mlflow ui`'s own default
PLOTS = ("edit_success.png", "locality_change.png")


def ui_url(settings: FixSettings) -> str:
    """The MLflow UI's address: ``$MEND_MLFLOW_UI_URL``, an HTTP tracking server, or `mlflow ui`'s default."""
    configured = os.environ.get(UI_URL_ENV)
    if configured:
        return configured.rstrip("/")
    uri = settings.tracking_uri or ""
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else DEFAULT_UI_URL


def version_page(settings: FixSettings, version: str) -> str:
    return f"{ui_url(settings)}/#/models/{settings.registered_model}/versions/{version}"


def artifact_route(experiment_id: str, mlflow_run_id: str) -> str:
    """The UI route (after ``#``) that shows the review page inside the run's artifact viewer. The
    server sends artifacts themselves as downloads (against XSS), so this is where a page can be read."""
    return f"/experiments/{experiment_id}/runs/{mlflow_run_id}/artifacts/{REVIEW_DIR}/{REVIEW_HTML}"


def _regressions(store, key: str) -> list[dict[str, str]]:
    """The changed locality answers, those that cost the gate most first (``gate_cost``)."""
    rows = list(csv.DictReader(io.StringIO(store.read_text(key)))) if store.exists(key) else []
    return sorted(rows, key=lambda row: -float(row.get("gate_cost") or 0))


def _flags_by_id(store) -> dict[str, dict[str, Any]]:
    from tasks.flags import read_flag_log

    return {flag.flag_id: flag.to_json() for flag in read_flag_log(store).flags}


def _edits(store, prefix: str) -> list[dict[str, Any]]:
    """The evaluation's rows, each with its greedy answers (before, after, paraphrases) and its flag."""
    rows = store.read_json(f"{prefix}/per_edit.json")
    answers_key = f"{prefix}/answers.json"
    answers = store.read_json(answers_key) if store.exists(answers_key) else {}
    flags = _flags_by_id(store)
    for row in rows:
        flag = flags.get(row["record_id"], {})
        found = answers.get(row["record_id"], {})
        row["paraphrases"] = found.get("paraphrases", [])
        row["answer_before"] = found.get("before", row.get("prediction_before", ""))
        row["answer_after"] = found.get("after", row.get("prediction_after", ""))
        row["answer_correct"] = found.get("correct")
        row["flag"] = {name: flag.get(name) for name in ("reporter", "flagged_at", "reason", "prediction",
                                                        "model_version")}  # fmt: skip
    return rows


def _plots(store, prefix: str) -> dict[str, str]:
    """The evaluation's plots as data URIs, so the page needs no other file."""
    found = {}
    for name in PLOTS:
        key = f"{prefix}/{name}"
        if store.exists(key):
            encoded = base64.b64encode(store.read_bytes(key)).decode("ascii")
            found[name.removesuffix(".png")] = f"data:image/png;base64,{encoded}"
    return found


def collect_review(settings: FixSettings, run_id: str, context: dict[str, Any]) -> dict[str, Any]:
    """Everything the page and ``mend review`` show, from the run's folder in the store.

    ``context``: champion_version, editor, editor_uri, counts, mlflow_run_id.
    """
    from tasks.registry import registry_client

    store = settings.open_store()
    run = registry_client(settings.tracking_uri).get_run(context["mlflow_run_id"])
    evaluation, gate = f"runs/{run_id}/evaluation", f"runs/{run_id}/gate/gate_outcomes.json"
    summary = store.read_json(f"{evaluation}/summary.json")
    outcomes = store.read_json(gate) if store.exists(gate) else {"passed": None, "expectations": []}
    before, after = summary.get("perplexity_before"), summary.get("perplexity_after")
    return {
        "format": "mend-review/1",
        "run_id": run_id,
        "model": settings.registered_model,
        "experiment_id": run.info.experiment_id,
        **context,
        "gate": outcomes,
        "summary": {
            "edits": summary.get("edits"),
            "aggregates": summary.get("aggregates", {}),
            "perplexity_before": before,
            "perplexity_after": after,
            "perplexity_change": (after / before - 1) if before and after else None,
            "retention": summary.get("retention"),
            "retained_edits": summary.get("retained_edits", 0),
            "locality_regressions": summary.get("locality_regressions", 0),
            "same_subject_regressions": summary.get("same_subject_regressions", 0),
            "near_tie_regressions": summary.get("near_tie_regressions"),
        },
        "edits": _edits(store, evaluation),
        "regressions": _regressions(store, f"{evaluation}/locality_regressions.csv"),
        "plots": _plots(store, evaluation),
    }


def write_review(settings: FixSettings, run_id: str, review: dict[str, Any]) -> str:
    """Store ``review.json`` and ``review.html`` in the run's folder; returns the folder's key."""
    import json

    from tasks.review_html import render_review

    store = settings.open_store()
    prefix = f"runs/{run_id}/{REVIEW_DIR}"
    store.write_text(f"{prefix}/{REVIEW_JSON}", json.dumps(review, indent=2, default=str))
    store.write_text(f"{prefix}/{REVIEW_HTML}", render_review(review))
    return prefix


def description(review: dict[str, Any], version: str) -> str:
    """The registered version's description (Markdown): the verdict, its numbers, the way to the page."""
    gate = review["gate"]
    verdict = "PASSED" if gate.get("passed") else "FAILED"
    lines = [
        f"**Gate {verdict}** for {review['summary']['edits']} edit(s) on champion version "
        f"{review.get('champion_version')}, editor `{review.get('editor_uri') or review.get('editor')}`.",
        "",
    ]
    # A list, not a table: the version page renders Markdown tables without borders or alignment.
    for item in gate.get("expectations", []):
        if item.get("threshold") is None and item["passed"]:
            continue  # the evaluation table's data checks; the review page lists them
        result = "n/a" if not item.get("applicable", True) else ("pass" if item["passed"] else "**FAIL**")
        lines.append(f"- {item['name']}: {result}, observed {_number(item.get('observed'))}, "
                     f"threshold {_number(item.get('threshold'))}")  # fmt: skip
    route = artifact_route(review["experiment_id"], review["mlflow_run_id"])
    lines += [
        "",
        f"**[Open the review page](#{route})**: every edit with its flag, paraphrases and locality, "
        "the locality regressions, retention, perplexity and the plots.",
        "",
        f"To approve: add the tag `approved_by` = your name on this page, then run "
        f"`mend promote --version {version}` (or `mend promote --version {version} --approve "
        "--approver NAME` in one step).",
    ]
    return "\n".join(lines)


def _number(value: Any) -> str:
    return "-" if value is None else (f"{value:.3f}" if isinstance(value, float) else str(value))


def describe_version(settings: FixSettings, version: str, run_id: str) -> dict[str, Any]:
    """Put the review's verdict and link into the registered version's description; returns the review."""
    from tasks.registry import registry_client

    review = settings.open_store().read_json(f"runs/{run_id}/{REVIEW_DIR}/{REVIEW_JSON}")
    client = registry_client(settings.tracking_uri)
    client.update_model_version(settings.registered_model, version, description=description(review, version))
    return review


@task(name="write-review", retries=1, retry_delay_seconds=5)
def review_task(settings: FixSettings, run_id: str, context: dict[str, Any]) -> str:
    """Build and store the review; a failed gate is announced from here (nothing else runs after it)."""
    from tasks.notify import announce_gate_failed

    review = collect_review(settings, run_id, context)
    prefix = write_review(settings, run_id, review)
    if review["gate"].get("passed") is False:
        announce_gate_failed(settings, review)
    return prefix


@task(name="describe-candidate", retries=2, retry_delay_seconds=5)
def describe_task(settings: FixSettings, version: str, run_id: str) -> None:
    """Link the review from the registered candidate, and announce that it waits for an approval."""
    from tasks.notify import announce_awaiting_approval

    review = describe_version(settings, version, run_id)
    announce_awaiting_approval(settings, review, version)


def load_review(settings: FixSettings, run_id: str) -> dict[str, Any] | None:
    """The review logged to MLflow run ``run_id``, or None for a run without one (the base model's)."""
    import json
    import tempfile

    import mlflow
    from mlflow.exceptions import MlflowException

    from tasks.tracking import configure_tracking

    configure_tracking(settings.tracking_uri)
    with tempfile.TemporaryDirectory() as scratch:
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=f"{REVIEW_DIR}/{REVIEW_JSON}", dst_path=scratch
            )
        except (MlflowException, OSError) as error:
            LOGGER.info("run %s has no review: %s", run_id, error)
            return None
        return json.loads(open(path, encoding="utf-8").read())
