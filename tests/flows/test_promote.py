"""Promotion needs a passing gate and a person's approval; rollback restores the previous champion."""

from __future__ import annotations

import pytest

from tests.flows.test_nightly_fix import PROMPTS, _flag, _states
from tests.pipeline_fixtures import LENIENT

pytestmark = pytest.mark.usefixtures("prefect_server")


def _champion(settings) -> str:
    from tasks.registry import champion_version

    return champion_version(settings.registered_model, tracking_uri=settings.tracking_uri)


def test_promotion_needs_approval_then_moves_champion_and_rollback_restores(make_settings):
    from flows.nightly_fix import nightly_fix
    from flows.promote import promote_flow, rollback_flow
    from tasks.champion import PromotionRefused

    settings = make_settings(thresholds=LENIENT)
    overrides = settings.to_json()
    flags = [_flag(settings, *PROMPTS[0])]
    candidate = nightly_fix(overrides=overrides).candidate_version
    with pytest.raises(PromotionRefused, match="not approved"):
        promote_flow(version=candidate, overrides=overrides)
    assert _champion(settings) == "1"

    record = promote_flow(version=candidate, approver="alice", approve=True, overrides=overrides)
    assert record["previous_champion"] == "1" and record["promoted_by"] == "alice"
    assert _champion(settings) == candidate
    assert _states(settings)[flags[0].flag_id].state.value == "promoted"

    # A second fix builds on the new champion and keeps the promoted edit as a retention check.
    second = _flag(settings, *PROMPTS[1])
    summary = nightly_fix(overrides=overrides)
    assert summary.champion_version == candidate and summary.summary["retained_edits"] == 1
    assert _states(settings)[second.flag_id].candidate_version == summary.candidate_version

    assert rollback_flow(overrides=overrides) == "1"
    assert _champion(settings) == "1"


def test_a_version_whose_gate_failed_cannot_be_approved_or_promoted(make_settings):
    from flows.promote import promote_flow
    from tasks.champion import PromotionRefused, approve
    from tasks.models import ensure_base

    settings = make_settings(thresholds=LENIENT)
    ensure_base(settings)  # version 1: the base, registered with gate_passed unset
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    client.set_model_version_tag(settings.registered_model, "1", "gate_passed", "false")
    with pytest.raises(PromotionRefused, match="gate"):
        approve(settings.registered_model, "1", "mallory", tracking_uri=settings.tracking_uri)
    client.set_model_version_tag(settings.registered_model, "1", "approved_by", "mallory")  # forged in the UI
    with pytest.raises(PromotionRefused, match="gate"):
        promote_flow(version="1", overrides=settings.to_json())
