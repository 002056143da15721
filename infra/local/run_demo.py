"""The demo against the local stack (``make run-services``): flags in, candidate out, by the worker.

It asks the champion the demo's questions, flags every wrong answer with ``mend flag`` (each flag is
written to the S3 flag log and announced as a ``mend.prediction.flagged`` event), and then only
watches: the ``on-flags`` deployment's trigger fires after 10 events, the worker on ``mend-cpu`` runs
the nightly fix, and this script prints the runs it saw, the MLflow run and the candidate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

from infra.local.stack import CLIENT_ENV, state_dir_from_env

TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
GATE_OUTCOMES = "gate/gate_outcomes.json"
SHOWN_METRICS = (
    "rewrite_acc",
    "rephrase_acc",
    "locality_neighbour",
    "locality_same_subject",
    "locality_unchanged",
)
EXIT_GATE_FAILED = 3  # as ``mend demo``: an expected outcome whose verdict was printed
TRIGGERED_DEPLOYMENT = "on-flags"


def load_client_env(state_dir: Path) -> None:
    """Take the pipeline's environment from the stack's ``client.env`` (written by ``services-up``)."""
    path = state_dir / CLIENT_ENV
    if not path.exists():
        raise SystemExit(f"{path} not found: start the stack first (make services-up)")
    for line in path.read_text().splitlines():
        name, _, value = line.partition("=")
        if name:
            os.environ[name] = value


def flag_with_cli(wrong: list[tuple[dict, str]], champion_version: str) -> int:
    """``mend flag`` for each wrong answer, through the command's own code (one process, not 30)."""
    from flows.cli import app

    for fact, answer in wrong:
        arguments = ["flag", "--prompt", fact["prompt"], "--correction", fact["answer"],
                     "--prediction", answer or "(empty)", "--reason", "wrong answer to a known fact",
                     "--reporter", "mend-demo", "--model-version", champion_version]  # fmt: skip
        if fact.get("paraphrase"):
            arguments += ["--paraphrase", fact["paraphrase"]]
        if fact.get("subject"):
            arguments += ["--subject", fact["subject"]]
        app(arguments, standalone_mode=False)
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all()  # every event reaches the server before this process moves on
    return len(wrong)


async def _deployment_runs(deployment: str, since: datetime) -> list:
    from prefect import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterName,
        FlowRunFilter,
        FlowRunFilterExpectedStartTime,
    )

    async with get_client() as client:
        return await client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment])),
            flow_run_filter=FlowRunFilter(expected_start_time=FlowRunFilterExpectedStartTime(after_=since)),
        )


def wait_for_runs(deployment: str, since: datetime, timeout_s: float, settle_s: float = 30.0) -> list:
    """Flow runs of ``deployment`` started after ``since``, once at least one exists and all have ended
    and no new one appeared for ``settle_s`` (later triggers may still be firing)."""
    deadline = time.monotonic() + timeout_s
    quiet_since, last_seen = None, -1
    while time.monotonic() < deadline:
        runs = asyncio.run(_deployment_runs(deployment, since))
        done = runs and all(run.state_type and run.state_type.value in TERMINAL for run in runs)
        if done and len(runs) == last_seen:
            if time.monotonic() - quiet_since >= settle_s:
                return runs
        else:
            quiet_since, last_seen = time.monotonic(), len(runs) if done else -1
        time.sleep(5)
    raise TimeoutError(f"no finished run of {deployment!r} within {timeout_s:.0f}s")


def fix_outcome(settings, flow_run_id: str) -> dict:
    """The MLflow run a fix flow run opened (tag ``mend.run_id``), its evaluation, the gate's outcomes
    (``gate/gate_outcomes.json``, None when the run stopped before the gate) and the version it registered."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    runs = mlflow.search_runs(experiment_names=["mend-fix"], filter_string=f"tags.`mend.run_id` = '{flow_run_id}'",
                              output_format="list")  # fmt: skip
    if not runs:
        return {"mlflow_run_id": None, "candidate_version": None, "gate": None}
    run = runs[0]
    versions = client.search_model_versions(
        f"name = '{settings.registered_model}' and run_id = '{run.info.run_id}'"
    )
    metrics = {name.removeprefix("eval/"): round(value, 3) for name, value in run.data.metrics.items()
               if name.removeprefix("eval/") in SHOWN_METRICS}  # fmt: skip
    return {"mlflow_run_id": run.info.run_id, "status": run.info.status, "metrics": metrics,
            "gate": _gate_outcomes(client, run.info.run_id),
            "candidate_version": versions[0].version if versions else None}  # fmt: skip


def _gate_outcomes(client, mlflow_run_id: str) -> dict | None:
    import tempfile

    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as directory:
        try:
            path = client.download_artifacts(mlflow_run_id, GATE_OUTCOMES, directory)
        except (MlflowException, OSError):  # no gate artifact: the run stopped before its gate
            return None
        return json.loads(Path(path).read_text())


def gate_verdict(outcomes: dict | None) -> str:
    """One line for the gate: passed, failed with each shortfall, or never reached."""
    from flows.cli_review import shortfall

    if outcomes is None:
        return "gate: no verdict recorded (the run stopped before its gate: see .mend/stack/logs/worker.log)"
    if outcomes["passed"]:
        return "gate PASSED: the candidate waits for approval (mend review, then mend promote)"
    failures = [item for item in outcomes["expectations"] if not item["passed"]]
    return (
        f"gate FAILED on {len(failures)} expectation(s): {'; '.join(shortfall(item) for item in failures)}. "
        "An outcome, not a crash: nothing was registered and the flags are marked failed_gate; "
        "read the run's review/review.html in MLflow, or retry them with other settings "
        "(MEND_RETRY_FAILED_GATE=true mend fix, with .mend/stack/client.env loaded)"
    )


def main(arguments: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.local.run_demo", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--timeout-minutes", type=float, default=60.0)
    parser.add_argument("--facts", type=Path, default=None, help="JSONL of facts (default: the demo's)")
    parser.add_argument("--settle-seconds", type=float, default=30.0, help="quiet time before the summary")
    options = parser.parse_args(arguments)
    state_dir = state_dir_from_env()
    load_client_env(state_dir)
    from tasks.demo import add_reference_prompts, ask_facts, read_facts
    from tasks.models import ensure_base
    from tasks.settings import FixSettings
    from tasks.tracking import configure_tracking

    settings = FixSettings.from_env()
    configure_tracking(settings.tracking_uri)
    since = datetime.now(UTC)
    base = ensure_base(settings)
    facts = read_facts(options.facts or Path(str(resources.files("flows") / "demo_facts.jsonl")))
    wrong, right = ask_facts(settings, facts, base.champion_version)
    add_reference_prompts(settings.open_store(), right)
    print(f"asked {len(facts)} questions; flagging {len(wrong)} wrong answers with `mend flag`")
    flag_with_cli(wrong, base.champion_version)
    print(f"waiting for the {TRIGGERED_DEPLOYMENT!r} deployment (trigger: 10 flags within an hour) ...")
    finished = wait_for_runs(
        TRIGGERED_DEPLOYMENT, since, options.timeout_minutes * 60, options.settle_seconds
    )
    gate_failed = False
    for run in sorted(finished,
                      key=lambda r: r.expected_start_time):  # fmt: skip
        outcome = fix_outcome(settings, str(run.id))
        print(f"flow run {run.name} ({run.id}): {run.state_type.value}; MLflow run {outcome['mlflow_run_id']}"
              f" at {settings.tracking_uri}; candidate version {outcome['candidate_version']}; "
              f"metrics {outcome.get('metrics', {})}")  # fmt: skip
        print(f"  {gate_verdict(outcome['gate'])}")
        gate_failed |= outcome["gate"] is not None and not outcome["gate"]["passed"]
    return EXIT_GATE_FAILED if gate_failed else 0


if __name__ == "__main__":
    sys.exit(main())
