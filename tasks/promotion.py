"""Promotion and rollback tasks: move ``champion`` (rules in ``tasks.champion``) and update the ledger."""

from __future__ import annotations

import logging
from dataclasses import asdict

from prefect import task

from tasks.ledger import FlagState, Ledger
from tasks.settings import FixSettings

LOGGER = logging.getLogger(__name__)


def promote_version(
    settings: FixSettings, version: str, *, approver: str | None = None, approve: bool = False
) -> dict:
    """Promote ``version`` if its gate passed and a person approved it; its flags become ``promoted``.

    ``approve=True`` records ``approver``'s approval first (the CLI's ``--approve``); otherwise the
    approval must already be on the version (e.g. set as a tag in the MLflow UI).
    """
    from tasks.champion import approve as approve_version
    from tasks.champion import promote

    if approve:
        if not approver:
            raise ValueError("--approve needs --approver NAME: an approval records who gave it")
        approve_version(settings.registered_model, version, approver, tracking_uri=settings.tracking_uri)
    record = promote(
        settings.registered_model, version, approver=approver, tracking_uri=settings.tracking_uri
    )
    ledger = Ledger(settings.open_store())
    flag_ids = [
        f
        for f, entry in ledger.states().items()
        if entry.state == FlagState.APPLIED and entry.candidate_version == str(version)
    ]
    if flag_ids:
        ledger.record(flag_ids, FlagState.PROMOTED, candidate_version=version, run_id=f"promote-{version}")
    LOGGER.info("promoted version %s (%d flags)", version, len(flag_ids))
    return {**asdict(record), "flags_promoted": len(flag_ids)}


def rollback_champion(settings: FixSettings) -> str:
    """Move ``champion`` back to the version it replaced. Flags stay ``promoted``: their edits remain in
    the registry and can be promoted again; a rollback is a serving decision, not a verdict on flags."""
    from tasks.champion import rollback

    return rollback(settings.registered_model, tracking_uri=settings.tracking_uri)


@task(name="promote-version")
def promote_task(
    settings: FixSettings, version: str, approver: str | None = None, approve: bool = False
) -> dict:
    return promote_version(settings, version, approver=approver, approve=approve)


@task(name="rollback-champion")
def rollback_task(settings: FixSettings) -> str:
    return rollback_champion(settings)
