"""Run the nightly fix from the command line and collect what to report, whether or not the gate passed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flows.nightly_fix import FixSummary, nightly_fix
from tasks.settings import FixSettings


@dataclass
class FixOutcome:
    run_id: str
    settings: FixSettings
    summary: FixSummary | None  # None when the gate failed (the flow raised)
    gate_failed: bool = False
    gate: list[dict[str, Any]] = field(default_factory=list)
    evaluation: dict[str, Any] = field(default_factory=dict)
    mlflow_run_id: str = ""


def run_fix(settings: FixSettings) -> FixOutcome:
    """Run ``nightly_fix``; a failed gate comes back as an outcome, any other failure raises."""
    from expectations.gate import GateFailed

    state = nightly_fix(return_state=True)
    run_id = str(state.state_details.flow_run_id)
    try:
        summary: FixSummary = state.result()
    except GateFailed as failure:
        store = settings.open_store()
        summary_key = f"runs/{run_id}/evaluation/summary.json"
        evaluation = store.read_json(summary_key) if store.exists(summary_key) else {}
        expectations = failure.result.to_dict()["expectations"]
        return FixOutcome(
            run_id, settings, None, True, expectations, evaluation, _mlflow_run(settings, run_id)
        )
    return FixOutcome(run_id, settings, summary, False, summary.gate, summary.summary, summary.mlflow_run_id)


def _mlflow_run(settings: FixSettings, run_id: str) -> str:
    """The MLflow run of fix run ``run_id`` (tagged ``mend.run_id``), or "" when there is none."""
    from tasks.registry import registry_client
    from tasks.tracking import DEFAULT_EXPERIMENT

    client = registry_client(settings.tracking_uri)
    experiment = client.get_experiment_by_name(DEFAULT_EXPERIMENT)
    if experiment is None:
        return ""
    runs = client.search_runs([experiment.experiment_id], f"tags.`mend.run_id` = '{run_id}'", max_results=1)
    return runs[0].info.run_id if runs else ""
