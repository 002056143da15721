"""The evaluation gate: the edit-gate GX suite on the candidate's evaluation. A failing gate marks this
run's new flags ``failed_gate`` with the failing expectations, then raises: nothing gets registered."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from prefect import task

from tasks.evaluate import EvaluationKeys
from tasks.ledger import FlagState, Ledger
from tasks.models import scratch_dir, upload_dir
from tasks.settings import FixSettings

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class GateVerdict:
    passed: bool
    outcomes: list[dict]  # name, passed, observed, threshold, reason, applicable
    result_key: str  # GX validation result (JSON) in the store
    docs_key: str  # Data Docs page (HTML) in the store


def run_gate_on(
    settings: FixSettings, run_id: str, evaluation: EvaluationKeys, new_flag_ids: list[str]
) -> GateVerdict:
    import pandas as pd

    from expectations.gate import enforce, run_gate, write_data_docs

    store = settings.open_store()
    table = pd.DataFrame(store.read_json(evaluation.table))
    summary = store.read_json(evaluation.summary)
    result = run_gate(table, summary, settings.thresholds())
    out = scratch_dir(run_id) / "gate"
    out.mkdir()
    (out / "gate_result.json").write_text(json.dumps(result.result_json, indent=2))
    (out / "gate_outcomes.json").write_text(json.dumps(result.to_dict(), indent=2, default=str))
    write_data_docs(result, out)
    prefix = upload_dir(store, out, f"runs/{run_id}/gate")
    verdict = GateVerdict(
        result.passed,
        [outcome for outcome in result.to_dict()["expectations"]],
        f"{prefix}/gate_result.json",
        f"{prefix}/edit_gate.html",
    )
    if not result.passed:
        failing = "; ".join(
            f"{item.name}: observed {item.observed}, threshold {item.threshold}" for item in result.failures
        )
        if new_flag_ids:
            Ledger(store).record(
                new_flag_ids, FlagState.FAILED_GATE, reason=f"gate failed: {failing}", run_id=run_id
            )
        LOGGER.warning("gate failed for run %s: %s", run_id, failing)
        enforce(result)  # raises GateFailed
    return verdict


@task(name="evaluation-gate")
def gate_task(
    settings: FixSettings, run_id: str, evaluation: EvaluationKeys, new_flag_ids: list[str]
) -> GateVerdict:
    return run_gate_on(settings, run_id, evaluation, new_flag_ids)
