"""Promotion on approval, and rollback: composition of the promotion tasks."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.concurrency.sync import concurrency

from flows.nightly_fix import LEDGER_LIMIT
from tasks.promotion import promote_task, rollback_task
from tasks.settings import FixSettings


@flow(name="promote")
def promote_flow(
    version: str, approver: str | None = None, approve: bool = False, overrides: dict[str, Any] | None = None
) -> dict:
    """Move ``champion`` to ``version`` if its gate passed and a person approved it."""
    with concurrency(LEDGER_LIMIT, occupy=1):
        return promote_task(FixSettings.from_env(**(overrides or {})), version, approver, approve)


@flow(name="rollback")
def rollback_flow(overrides: dict[str, Any] | None = None) -> str:
    """Move ``champion`` back to the version it replaced."""
    return rollback_task(FixSettings.from_env(**(overrides or {})))
