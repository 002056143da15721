"""Register a gated candidate in MLflow and record its flags as applied, idempotently.

The run key (champion version, editor, flag ids) makes a rerun after a crash between registering and
updating the ledger reuse the version it already registered instead of registering the edits twice.
"""

from __future__ import annotations

import hashlib
import logging

from prefect import task

from tasks.ledger import FlagState, Ledger
from tasks.models import download_dir, scratch_dir
from tasks.settings import FixSettings

LOGGER = logging.getLogger(__name__)


def run_key(champion_version: str, editor: str, flag_ids: list[str]) -> str:
    digest = hashlib.sha256(f"{champion_version}|{editor}|{','.join(sorted(flag_ids))}".encode())
    return digest.hexdigest()[:32]


def register(
    settings: FixSettings,
    run_id: str,
    mlflow_run_id: str,
    snapshot_prefix: str,
    champion_version: str,
    new_flag_ids: list[str],
    carried_flag_ids: list[str],
) -> str:
    """Register the candidate (alias ``candidate``) and mark every flag in it ``applied``; returns the version."""
    from tasks.registry import register_candidate

    store = settings.open_store()
    flag_ids = new_flag_ids + carried_flag_ids
    snapshot_dir = download_dir(store, snapshot_prefix, scratch_dir(run_id) / "snapshot")
    version = register_candidate(
        settings.registered_model,
        snapshot_dir,
        run_id=mlflow_run_id,
        gate_passed=True,
        flag_ids=flag_ids,
        run_key=run_key(champion_version, settings.editor, flag_ids),
        derived_from_version=champion_version,
        tracking_uri=settings.tracking_uri,
    )
    ledger = Ledger(store)
    states = ledger.states()
    superseded = [f for f in carried_flag_ids if states[f].candidate_version != str(version)]
    if superseded:  # they move from the old candidate to this one, which includes their edits
        ledger.record(
            superseded, FlagState.PENDING, reason=f"superseded by candidate {version}", run_id=run_id
        )
    ledger.record(flag_ids, FlagState.APPLIED, candidate_version=version, run_id=run_id)
    LOGGER.info("registered candidate version %s with %d flags", version, len(flag_ids))
    return version


@task(name="register-candidate", retries=2, retry_delay_seconds=5)
def register_task(
    settings: FixSettings,
    run_id: str,
    mlflow_run_id: str,
    snapshot_prefix: str,
    champion_version: str,
    new_flag_ids: list[str],
    carried_flag_ids: list[str],
) -> str:
    return register(
        settings, run_id, mlflow_run_id, snapshot_prefix, champion_version, new_flag_ids, carried_flag_ids
    )
