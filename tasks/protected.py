"""The base model's protected keys for least-squares editors: measured once per base model and cached.

The sources exclude everything a gate or benchmark scores (``editing.data.protected_sources``), the
editor's own training edits, and everything in this store that the gate scores: flagged prompts and their
paraphrases, and the demo's reference prompts (the locality pool). The cache lives under
``$MEND_CACHE_DIR/protected/`` and is keyed by the base model's fingerprint and the sources, so a second
editor for the same base (or a second demo) reuses it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from editing.core.models import LoadedModel, cache_dir
from editing.core.targets import resolve_scope
from editing.data.protected_sources import protected_sources
from editing.mend.neighbours import BANK_FILE, NeighbourBank, build_neighbour_bank
from editing.mend.protected import PROTECTED_FILE, ProtectedKeys, collect_protected_keys
from editing.mend.substitutes import SubjectPool, cached_subject_pool, candidate_subjects
from tasks.dataset import REFERENCE_PROMPTS_KEY
from tasks.flags import read_flag_log
from tasks.settings import FixSettings
from tasks.storage import Store

LOGGER = logging.getLogger(__name__)


def store_scored_prompts(store: Store) -> list[str]:
    """Prompts of this store that a gate scores: every flag's prompt and paraphrases, the reference prompts."""
    prompts = [p for flag in read_flag_log(store).flags for p in (flag.prompt, *flag.paraphrases)]
    if store.exists(REFERENCE_PROMPTS_KEY):
        for line in store.read_text(REFERENCE_PROMPTS_KEY).splitlines():
            if line.strip():
                prompts.append(json.loads(line)["prompt"])
    return prompts


def protected_keys_for(
    settings: FixSettings,
    loaded: LoadedModel,
    exclude: Sequence[str],
    on_progress: Callable[[int, int], None] | None = None,
) -> ProtectedKeys:
    """The pipeline's protected keys for ``loaded``, with the settings' data and sizes."""
    from tasks.progress import progress_callback

    report = on_progress or progress_callback("measuring the base model's protected keys", "prompts")
    return cached_protected_keys(
        loaded, settings.data_dir, settings.protected_texts, settings.protected_facts, exclude, report
    )


def cached_protected_keys(
    loaded: LoadedModel,
    data_dir: str | Path,
    texts: int,
    facts: int,
    exclude: Sequence[str],
    on_progress: Callable[[int, int], None] | None = None,
) -> ProtectedKeys:
    """The base model's protected keys, from the cache or measured now (about a minute on two cores)."""
    sources = protected_sources(data_dir, texts=texts, facts=facts, exclude=exclude)
    digest = hashlib.sha256(
        json.dumps([sources.texts, [(f.prompt, f.answer) for f in sources.facts]]).encode()
    ).hexdigest()[:16]
    directory = cache_dir() / "protected" / f"{loaded.fingerprint[:16]}-{digest}"
    if (directory / PROTECTED_FILE).is_file():
        LOGGER.info("protected keys from the cache: %s", directory)
        return ProtectedKeys.load(directory, base_fingerprint=loaded.fingerprint)
    started = time.perf_counter()
    protected = collect_protected_keys(
        loaded.model, loaded.tokenizer, resolve_scope(loaded.model), loaded.fingerprint,
        texts=sources.texts, facts=sources.facts, on_progress=on_progress,
    )  # fmt: skip
    protected.info.update({"excluded_as_scored": sources.excluded, "seconds": time.perf_counter() - started})
    protected.save(directory)
    LOGGER.info("measured protected keys in %.0f s: %s", time.perf_counter() - started, protected.info)
    return protected


def neighbour_bank_for(settings: FixSettings, loaded: LoadedModel, exclude: Sequence[str]) -> NeighbourBank:
    """The base model's neighbour bank (editing.mend.neighbours), from the cache or built now, less the
    facts whose prompts are in ``exclude`` (what this store's gate scores)."""
    sources = protected_sources(settings.data_dir, texts=0, facts=settings.neighbour_bank_records)
    digest = hashlib.sha256(json.dumps([(f.prompt, f.answer) for f in sources.facts]).encode()).hexdigest()
    directory = cache_dir() / "neighbours" / f"{loaded.fingerprint[:16]}-{digest[:16]}"
    if (directory / BANK_FILE).is_file():
        bank = NeighbourBank.load(directory, base_fingerprint=loaded.fingerprint)
    else:
        started = time.perf_counter()
        bank = build_neighbour_bank(
            loaded.model, loaded.tokenizer, resolve_scope(loaded.model), loaded.fingerprint, sources.facts
        )
        bank.save(directory)
        LOGGER.info("built the neighbour bank in %.0f s: %d known facts of %d",
                    time.perf_counter() - started, len(bank.facts), len(sources.facts))  # fmt: skip
    return bank.without(exclude)


def subject_pool_for(settings: FixSettings, loaded: LoadedModel, exclude: Sequence[str]) -> SubjectPool:
    """The base model's subject pool for same-wording neighbours (editing.mend.substitutes), cached per
    base model and subject list, less every subject that ``exclude`` (what this store's gate scores) names."""
    from tasks.progress import progress_callback

    digest = hashlib.sha256(json.dumps(candidate_subjects(settings.data_dir)).encode()).hexdigest()[:16]
    directory = cache_dir() / "subjects" / f"{loaded.fingerprint[:16]}-{digest}"
    report = progress_callback("embedding the subject pool", "subjects")
    pool = cached_subject_pool(
        directory, loaded.model, loaded.tokenizer, settings.data_dir, loaded.fingerprint, report
    )
    return pool.without_mentioned(exclude)
