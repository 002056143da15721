"""Quality benchmark: a MEND editor trained within a time budget on the CounterFact train split,
against FT, FT+KL and the unedited model, with single edits on the CounterFact val split."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from benchmarks.editors import TRAIN_FILE, VAL_FILE
from editing.core.models import LoadedModel
from editing.data.records import read_records
from editing.editors import build_editor
from editing.evaluation.evaluate import evaluate_edit, run_single_edits

LOGGER = logging.getLogger(__name__)
KL_REFERENCE = 32  # reference prompts for FT+KL's KL term


def evaluate_editors(
    loaded: LoadedModel, data_dir: Path, editor_dir: Path, editors: list[str], count: int, on_progress=None
) -> dict[str, Any]:
    """Aggregates per editor; "unedited" scores the model itself (its locality is 1 by definition)."""
    records = read_records(data_dir / VAL_FILE, limit=count).records
    # FT+KL keeps a fixed set of reference prompts in place, drawn from the train split: using the
    # evaluated records' own locality probes would let it optimise the very numbers it is scored on.
    reference = [r.locality[0] for r in read_records(data_dir / TRAIN_FILE, limit=KL_REFERENCE).records]
    results: dict[str, Any] = {}
    for name in editors:
        started = time.perf_counter()
        if name == "unedited":
            evaluation = evaluate_edit(loaded.model, loaded.model, loaded.tokenizer, records)
        else:
            editor = build_editor(
                name, loaded, editor_path=editor_dir if name == "mend" else None,
                kl_reference=reference if name == "ft-kl" else (),
            )  # fmt: skip
            progress = (
                (lambda done, total, name=name: on_progress(name, done, total)) if on_progress else None
            )
            evaluation = run_single_edits(
                editor, loaded.model, loaded.tokenizer, records, on_progress=progress
            )
        seconds = time.perf_counter() - started
        results[name] = {"aggregates": evaluation.aggregates, "seconds": seconds, "rows": evaluation.rows}
        LOGGER.info("%s: %s (%.0f s)", name, evaluation.aggregates, seconds)
    return results
