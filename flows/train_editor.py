"""Train a MEND editor for the base model and register it (GPU when present, else CPU with a budget)."""

from __future__ import annotations

from typing import Any

from prefect import flow, task

from tasks.editor import train_and_register
from tasks.settings import FixSettings


@task(name="train-editor")
def train_task(settings: FixSettings) -> str:
    uri, _ = train_and_register(settings)
    return uri


@flow(name="train-editor")
def train_editor_flow(overrides: dict[str, Any] | None = None) -> str:
    """Returns ``models:/mend-editor/<version>`` of the newly registered editor."""
    return train_task(FixSettings.from_env(**(overrides or {})))
