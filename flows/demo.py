"""The demo behind ``make run``: seed flags from the model's wrong answers (then the nightly fix runs)."""

from __future__ import annotations

import os
from importlib import resources
from typing import Any

from prefect import flow

from tasks.demo import SeedResult, seed_task
from tasks.models import ensure_base_task
from tasks.settings import FixSettings

# One facts file per demo night; night two asks about other relations (composers, founders, continents,
# sports, atomic numbers, landmarks), after night one's candidate has been promoted.
NIGHTS = {1: "demo_facts.jsonl", 2: "demo_facts_night2.jsonl"}
FACTS = NIGHTS[1]


@flow(name="seed-demo-flags")
def seed_demo_flow(overrides: dict[str, Any] | None = None, night: int = 1) -> SeedResult:
    """Ask the champion the night's demo questions once per store and flag every wrong answer."""
    settings = FixSettings.from_env(**(overrides or {}))
    base = ensure_base_task(settings)
    variable = "MEND_DEMO_FACTS" if night == 1 else f"MEND_DEMO_FACTS_NIGHT{night}"  # another question set
    facts = os.environ.get(variable) or str(resources.files("flows") / NIGHTS[night])
    return seed_task(settings, facts, base.champion_version)
