"""Promotion on approval, and rollback: composition of the promotion tasks."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.locks import ledger_lock
from tasks.promotion import promote_task, rollback_task
from tasks.settings import FixSettings


@flow(name="promote")
def promote_flow(
    version: str, approver: str | None = None, approve: bool = False, overrides: dict[str, Any] | None = None
) -> dict:
    """Move ``champion`` to ``version`` if its gate passed and a person approved it."""
    with ledger_lock():
        return promote_task(FixSettings.from_env(**(overrides or {})), version, approver, approve)


@flow(name="rollback")
def rollback_flow(overrides: dict[str, Any] | None = None) -> str:
    """Move ``champion`` back to the version it replaced."""
    with ledger_lock():  # a fix run reads the champion it edits; it must not move mid-run
        return rollback_task(FixSettings.from_env(**(overrides or {})))
