"""The fix pipeline end to end on a tiny model, under a real (temporary) Prefect server."""

from __future__ import annotations

import csv
import io
import json

import pytest

from tests.pipeline_fixtures import LENIENT

pytestmark = pytest.mark.usefixtures("prefect_server")

PROMPTS = [
    ("The capital of France is", "Rome", ("France's capital city is",), "France"),
    ("Harry Potter was written by", "Tokyo", ("The author of Harry Potter is",), "Harry Potter"),
]


def _flag(settings, prompt, correction, paraphrases=(), subject=None, **changes):
    from tasks.flags import Flag, append_flags
    from tasks.storage import open_store

    values = dict(model_name=settings.registered_model, model_version="1", prompt=prompt, prediction="Paris",
                  correction=correction, paraphrases=paraphrases, subject=subject, reason="wrong", reporter="test")  # fmt: skip
    flag = Flag.create(**{**values, **changes})
    append_flags(open_store(settings.store_uri), [flag])
    return flag


def _states(settings):
    from tasks.ledger import Ledger
    from tasks.storage import open_store

    return {flag_id: entry for flag_id, entry in Ledger(open_store(settings.store_uri)).states().items()}


def _versions(settings):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    return sorted(int(v.version) for v in client.search_model_versions(f"name='{settings.registered_model}'"))


def test_fix_run_registers_a_gated_candidate_and_marks_flags_applied(make_settings):
    from flows.nightly_fix import nightly_fix

    # Every template fact counts as known to the random tiny model, so each flag gets same-subject probes.
    settings = make_settings(thresholds=LENIENT, same_subject_min_probability=0.0)
    flags = [_flag(settings, *case) for case in PROMPTS]
    summary = nightly_fix(overrides=settings.to_json())
    assert summary.gate_passed is True and summary.candidate_version == "2"
    _assert_same_subject_locality(settings, summary)
    assert summary.counts["accepted"] == 2 and summary.edits_applied == 2
    states = _states(settings)
    assert {states[f.flag_id].state.value for f in flags} == {"applied"}
    assert {states[f.flag_id].candidate_version for f in flags} == {"2"}
    assert _versions(settings) == [1, 2]

    rerun = nightly_fix(overrides=settings.to_json())  # nothing new: applies nothing twice
    assert rerun.gate_passed is None and rerun.candidate_version is None
    assert _versions(settings) == [1, 2]


def _assert_same_subject_locality(settings, summary):
    """Each flag's subject's other facts are probed, scored in their own column and judged on their own."""
    from tasks.storage import open_store

    store = open_store(settings.store_uri)
    prefix = f"runs/{summary.run_id}"
    records = [json.loads(line) for line in store.read_text(f"{prefix}/edit_dataset.jsonl").splitlines()]
    own = {
        record["subject"]: [probe for probe in record["locality"] if probe["kind"] == "same_subject"]
        for record in records
    }
    # "The capital of {} is" shows a country: two of the country relations are asked of France...
    assert len(own["France"]) == 2 and all("France" in probe["prompt"] for probe in own["France"])
    # ...while "{} was written by" shows no kind, so no relation is asked of Harry Potter (the pool has
    # no fact about it either): no probes, and no same-subject score, rather than nonsense questions.
    assert own["Harry Potter"] == []
    assert all(len(record["locality"]) > len(own[record["subject"]]) for record in records)  # neighbours stay
    rows = {row["prompt"]: row for row in store.read_json(f"{prefix}/evaluation/per_edit.json")}
    assert 0.0 <= rows["The capital of France is"]["locality_same_subject"] <= 1.0
    assert rows["Harry Potter was written by"]["locality_same_subject"] is None
    gate = {item["name"]: item for item in summary.gate}
    assert (
        gate["min_locality_same_subject"]["applicable"]
        and gate["min_locality_same_subject"]["threshold"] == 0.0
    )
    regressions = store.read_text(f"{prefix}/evaluation/locality_regressions.csv")
    assert regressions.startswith("edit,prompt,kind,before,after,champion_odds,near_tie,gate_cost")
    changed = list(csv.DictReader(io.StringIO(regressions)))
    for row in changed:  # each changed answer says how sure the champion was where the answers part
        assert (row["near_tie"], row["champion_odds"]) == ("", "") or (
            row["near_tie"] in ("yes", "no") and float(row["champion_odds"]) > 0
        )
    evaluation = store.read_json(f"{prefix}/evaluation/summary.json")
    assert evaluation["near_tie_regressions"] == sum(row["near_tie"] == "yes" for row in changed)
    # What the changed answers took off the neighbour column is exactly what the gate saw missing.
    cost = evaluation["neighbour_locality_cost"]
    assert cost["total"] == pytest.approx(1 - gate["min_locality_unchanged"]["observed"], abs=1e-4)
    assert cost["near_ties"] + cost["other"] == pytest.approx(cost["total"], abs=1e-4)
    assert all(float(row["gate_cost"]) >= 0 for row in changed)


def test_malformed_invalid_and_conflicting_flags_are_quarantined_with_reasons(make_settings):
    from flows.nightly_fix import nightly_fix
    from tasks.storage import open_store

    settings = make_settings(thresholds=LENIENT)
    good = _flag(settings, *PROMPTS[0])
    same_as_prediction = _flag(settings, "The capital of Spain is", "Paris")
    wrong_model = _flag(settings, "The capital of Italy is", "Oslo", model_name="another-model")
    conflict_a = _flag(settings, "Harry Potter was written by", "Tokyo")
    conflict_b = _flag(settings, "Harry Potter was written by", "Berlin")
    store = open_store(settings.store_uri)
    store.write_text("flags/2026-01-01/broken.jsonl", '{"prompt": "no other fields"}\nnot json\n')

    summary = nightly_fix(overrides=settings.to_json())
    states = _states(settings)
    assert states[good.flag_id].state.value == "applied"
    assert "correction" in states[same_as_prediction.flag_id].reason
    assert "model_name" in states[wrong_model.flag_id].reason
    for flag in (conflict_a, conflict_b):
        assert states[flag.flag_id].state.value == "rejected" and "conflicting" in states[flag.flag_id].reason
    malformed = [entry for flag_id, entry in states.items() if flag_id.startswith("malformed:")]
    assert len(malformed) == 2 and all(entry.state.value == "rejected" for entry in malformed)
    quarantine = store.read_text(f"runs/{summary.run_id}/quarantine.jsonl").splitlines()
    assert len(quarantine) == 6  # every rejected flag and line, each with its reason


def test_failed_gate_registers_nothing_and_marks_flags(make_settings):
    from expectations.gate import GateFailed
    from flows.nightly_fix import nightly_fix

    strict = {
        **LENIENT,
        "min_edit_success": 1.0,
        "min_paraphrase_success": 1.0,
        "min_locality_unchanged": 1.0,
    }
    settings = make_settings(thresholds=strict, editor="ft")
    flag = _flag(settings, *PROMPTS[0])
    with pytest.raises(GateFailed):
        nightly_fix(overrides={**settings.to_json()})
    state = _states(settings)[flag.flag_id]
    assert state.state.value == "failed_gate" and "min_" in state.reason
    assert _versions(settings) == [1]


def test_run_killed_after_apply_completes_on_rerun_without_duplicate_edits(make_settings, monkeypatch):
    import tasks.evaluate
    from flows.nightly_fix import nightly_fix

    settings = make_settings(thresholds=LENIENT)
    flags = [_flag(settings, *case) for case in PROMPTS]
    original = tasks.evaluate.evaluate_candidate

    def crash(*args, **kwargs):  # a fault double: the worker dies right after the apply step
        raise RuntimeError("worker killed")

    monkeypatch.setattr(tasks.evaluate, "evaluate_candidate", crash)
    with pytest.raises(RuntimeError, match="worker killed"):
        nightly_fix(overrides=settings.to_json())
    assert _versions(settings) == [1]
    assert all(
        flag.flag_id not in _states(settings) or _states(settings)[flag.flag_id].state.value == "pending"
        for flag in flags
    )

    monkeypatch.setattr(tasks.evaluate, "evaluate_candidate", original)
    summary = nightly_fix(overrides=settings.to_json())
    assert summary.candidate_version == "2" and _versions(settings) == [1, 2]
    from tasks.models import load_version

    metadata = load_version(settings, "2").metadata
    assert sorted(metadata.flag_ids) == sorted(f.flag_id for f in flags)  # each edit exactly once
