"""Where the pipeline stands, for ``mend status``: champion and candidate with their gate results, the last
fix run, flags by state with the age of the oldest one waiting, and the versions waiting for a person."""

from __future__ import annotations

import logging
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from tasks.settings import FixSettings

LOGGER = logging.getLogger(__name__)
UNCONSUMED = "new"  # a flag in the log that no fix run has read yet


def _version_info(settings: FixSettings, client, version: str | None) -> dict[str, Any] | None:
    from tasks.registry import Tag
    from tasks.review import load_review

    if version is None:
        return None
    found = client.get_model_version(settings.registered_model, version)
    tags = found.tags
    review = load_review(settings, found.run_id) if tags.get(Tag.ROLE) == "candidate" else None
    return {
        "version": version,
        "role": tags.get(Tag.ROLE, "?"),
        "gate_passed": tags.get(Tag.GATE_PASSED),
        "approved_by": tags.get(Tag.APPROVED_BY),
        "promoted_by": tags.get(Tag.PROMOTED_BY),
        "edits": len(_json_list(tags.get(Tag.FLAG_IDS))),
        "gate": (review or {}).get("gate", {}).get("expectations", []),
    }


def _json_list(text: str | None) -> list:
    import json

    return json.loads(text) if text else []


def _waiting(settings: FixSettings, client, champion: str | None) -> list[dict[str, Any]]:
    """Candidates after the champion whose gate passed and that nobody promoted yet."""
    from tasks.registry import Tag, search_versions

    waiting = []
    for found in search_versions(client, settings.registered_model, **{Tag.ROLE: "candidate"}):
        tags = found.tags
        newer = champion is None or int(found.version) > int(champion)
        if newer and tags.get(Tag.GATE_PASSED) == "true" and not tags.get(Tag.PROMOTED_BY):
            waiting.append({"version": str(found.version), "approved_by": tags.get(Tag.APPROVED_BY)})
    return waiting


def _last_fix_run(settings: FixSettings) -> dict[str, Any] | None:
    import mlflow

    from tasks.review import load_review
    from tasks.tracking import DEFAULT_EXPERIMENT

    experiment = mlflow.get_experiment_by_name(DEFAULT_EXPERIMENT)
    if experiment is None:
        return None
    runs = mlflow.MlflowClient().search_runs(
        [experiment.experiment_id], "attributes.run_name LIKE 'fix-%'", order_by=["attributes.start_time DESC"],
        max_results=1,
    )  # fmt: skip
    if not runs:
        return None
    run = runs[0]
    review = load_review(settings, run.info.run_id)
    started = datetime.fromtimestamp(run.info.start_time / 1000, UTC)
    gate = (review or {}).get("gate", {})
    return {"name": run.info.run_name, "status": run.info.status, "started": started.isoformat(timespec="seconds"),
            "gate_passed": gate.get("passed"), "gate": gate.get("expectations", []),
            "edits": (review or {}).get("summary", {}).get("edits")}  # fmt: skip


def flag_counts(settings: FixSettings, now: datetime | None = None) -> dict[str, Any]:
    """Flags by state (``new`` for those no fix run has read) and the oldest waiting flag's age in seconds."""
    from tasks.flags import read_flag_log
    from tasks.ledger import FlagState, Ledger

    store = settings.open_store()
    states = Ledger(store).states()
    flags = read_flag_log(store).flags
    counts = Counter(entry.state.value for entry in states.values())
    unread = [flag for flag in flags if flag.flag_id not in states]
    if unread:
        counts[UNCONSUMED] = len(unread)
    waiting = unread + [flag for flag in flags if flag.flag_id in states
                        and states[flag.flag_id].state == FlagState.PENDING]  # fmt: skip
    oldest = min((flag.flagged_at for flag in waiting), default=None)
    age = None if oldest is None else ((now or datetime.now(UTC)) - oldest).total_seconds()
    return {"by_state": dict(counts), "waiting": len(waiting), "oldest_waiting_seconds": age}


def pipeline_status(settings: FixSettings) -> dict[str, Any]:
    from tasks.registry import CANDIDATE, CHAMPION, alias_version, registry_client

    client = registry_client(settings.tracking_uri)
    champion = alias_version(client, settings.registered_model, CHAMPION)
    candidate = alias_version(client, settings.registered_model, CANDIDATE)
    return {
        "model": settings.registered_model,
        "champion": _version_info(settings, client, champion),
        "candidate": _version_info(settings, client, candidate),
        "last_fix_run": _last_fix_run(settings),
        "flags": flag_counts(settings),
        "waiting": _waiting(settings, client, champion),
    }
