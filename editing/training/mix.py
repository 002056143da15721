"""The records an editor trains on, by the name of their mix (``TrainConfig.training_mix``).

* ``counterfact``: the CounterFact train records the caller read (the landed editors);
* ``generated``: records built from the base model's own confident answers over the project's relation
  templates (``editing.data.generator``), cached per base-model fingerprint;
* ``counterfact+generated``: both, interleaved in a seeded order so every stretch of training sees both.

Validation keeps to the caller's held-out records, so selection judges every mix on the same edits.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from editing.config import TRAINING_MIXES, ConfigError
from editing.core.models import LoadedModel
from editing.data.edit_record import EditRecord
from editing.data.generator import GeneratorConfig, cached_generation, generate_records

LOGGER = logging.getLogger(__name__)


def mix_records(
    mix: str, counterfact: Sequence[EditRecord], generated: Sequence[EditRecord], *, seed: int
) -> list[EditRecord]:
    """The named mix of the two sources; a mix that needs a source given empty is an error."""
    if mix not in TRAINING_MIXES:
        raise ConfigError(f"unknown training mix {mix!r}; one of {TRAINING_MIXES}")
    uses_counterfact, uses_generated = mix != "generated", mix != "counterfact"
    if uses_counterfact and not counterfact:
        raise ConfigError(f"training mix {mix!r} needs CounterFact records, got none")
    if uses_generated and not generated:
        raise ConfigError(f"training mix {mix!r} needs generated records, got none")
    mixed = [*(counterfact if uses_counterfact else ()), *(generated if uses_generated else ())]
    if uses_counterfact and uses_generated:
        random.Random(seed).shuffle(mixed)
    return mixed


def training_records(
    loaded: LoadedModel,
    mix: str,
    counterfact: Sequence[EditRecord],
    *,
    data_dir: str | Path,
    cache_dir: str | Path,
    generator: GeneratorConfig | None = None,
) -> tuple[list[EditRecord], dict[str, Any]]:
    """The mix's records and what the generator reported (empty when the mix does not generate)."""
    generator = generator or GeneratorConfig()
    if mix == "counterfact":
        return mix_records(mix, counterfact, (), seed=generator.seed), {}
    generation, hit = cached_generation(
        cache_dir, loaded.fingerprint, generator,
        lambda: generate_records(loaded.model, loaded.tokenizer, data_dir, generator),
    )  # fmt: skip
    LOGGER.info("%s %d generated records", "reused" if hit else "built", len(generation.records))
    records = mix_records(mix, counterfact, generation.records, seed=generator.seed)
    return records, {**generation.info, "cache_hit": hit}
