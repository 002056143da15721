"""The demo behind ``make run``: seed flags from the model's wrong answers (then the nightly fix runs)."""

from __future__ import annotations

import os
from importlib import resources
from typing import Any

from prefect import flow

from tasks.demo import SeedResult, seed_task
from tasks.models import ensure_base_task
from tasks.settings import FixSettings

FACTS = "demo_facts.jsonl"


@flow(name="seed-demo-flags")
def seed_demo_flow(overrides: dict[str, Any] | None = None) -> SeedResult:
    """Ask the champion the demo questions once per store and flag every wrong answer."""
    settings = FixSettings.from_env(**(overrides or {}))
    base = ensure_base_task(settings)
    facts = os.environ.get("MEND_DEMO_FACTS") or str(resources.files("flows") / FACTS)
    return seed_task(settings, facts, base.champion_version)
