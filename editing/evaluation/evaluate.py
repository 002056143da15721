"""Score models on edit records and compare a model before and after an edit.

``score_records`` (in ``scoring``, re-exported here) runs each record's queries once (the rewrite prompt,
every rephrase and portability probe, every locality probe), batched and only at scored positions,
against every alias of the answer, and keeps what comparisons need. ``compare_scores`` turns a
before/after pair into one table row. On top of these sit the field's two protocols: ``run_single_edits``
(each record, or each edit group, edited on its own, then undone) and ``run_batch_edit`` (all records in
one edit). Records are processed in chunks, so memory does not grow with the record count.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from editing.core.apply import Editor
from editing.core.forward import eval_mode, scored_logits
from editing.core.losses import token_nll
from editing.core.tokens import encode_texts
from editing.data.edit_record import SAME_SUBJECT_KINDS, EditRecord
from editing.evaluation.metrics import accuracy_drawdown, mean_kl, mean_or_none, unchanged_fraction
from editing.evaluation.metrics import (
    perplexity as perplexity_from_nll,
)
from editing.evaluation.scoring import QueryScore, RecordScores, score_records

__all__ = [
    "EditEvaluation",
    "QueryScore",
    "RecordScores",
    "aggregate",
    "compare_scores",
    "edit_units",
    "evaluate_edit",
    "perplexity",
    "probe_changes",
    "run_batch_edit",
    "run_single_edits",
    "score_records",
]

PREDICTION_TOKENS = 5  # target tokens decoded into a row's "prediction" column for display
# Row columns averaged into the aggregates (None values, e.g. no portability probes, are left out).
AVERAGED_COLUMNS = (
    "rewrite_acc",
    "rewrite_exact",
    "rephrase_acc",
    "locality_unchanged",
    "locality_kl",
    "locality_drawdown",
    "locality_neighbour",
    "locality_same_subject",
    "portability_acc",
    "pre_rewrite_acc",
    "pre_rephrase_acc",
    "edit_seconds",
)
SCORE_COLUMNS = ("rewrite_acc", "rephrase_acc", "locality_unchanged")


@dataclass
class EditEvaluation:
    """One row per record (plain dicts) and the means over rows; ``probe_changes`` (filled by
    ``evaluate_edit``, not serialised) gives per record id each locality probe's ``probe_changes``."""

    rows: list[dict[str, Any]]
    aggregates: dict[str, float | None]
    probe_changes: dict[str, list[float]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"rows": [dict(row) for row in self.rows], "aggregates": dict(self.aggregates)}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> EditEvaluation:
        return cls(rows=list(raw["rows"]), aggregates=dict(raw["aggregates"]))


def probe_changes(before: RecordScores, after: RecordScores) -> list[float]:
    """Per locality probe (in the record's order), the fraction of its answer positions whose argmax the
    edit changed: what each probe takes off the record's ``locality_unchanged``, times its probe count."""
    return [
        float((old.predictions != new.predictions).double().mean()) if len(old.predictions) else 0.0
        for old, new in zip(before.locality, after.locality, strict=True)
    ]


def _locality_metrics(before: list[QueryScore], after: list[QueryScore]) -> dict[str, float | None]:
    """Per-probe locality metrics averaged over the record's probes (None without probes)."""
    if not before:
        return {"locality_unchanged": None, "locality_kl": None, "locality_drawdown": None}
    lengths = [len(score.predictions) for score in before]
    example = torch.repeat_interleave(torch.arange(len(before)), torch.tensor(lengths))  # (positions,)
    unchanged = unchanged_fraction(
        torch.cat([s.predictions for s in before]),
        torch.cat([s.predictions for s in after]),
        example,
        len(before),
    )
    kl = mean_kl(
        torch.cat([s.log_probs for s in before]),
        torch.cat([s.log_probs for s in after]),
        example,
        len(before),
    )
    drawdown = accuracy_drawdown(
        torch.tensor([s.accuracy for s in before]), torch.tensor([s.accuracy for s in after])
    )
    return {
        "locality_unchanged": float(unchanged.mean()),
        "locality_kl": float(kl.mean()),
        "locality_drawdown": float(drawdown.mean()),
    }


def _locality_by_kind(record: EditRecord, before: RecordScores, after: RecordScores) -> dict[str, Any]:
    """Locality unchanged over the record's neighbour probes (other subjects) and, separately, over its
    same-subject probes (the edited subject's other facts); None where the record has none of a kind."""
    same = [probe.kind in SAME_SUBJECT_KINDS for probe in record.locality]
    columns = {}
    for column, wanted in (("locality_neighbour", False), ("locality_same_subject", True)):
        chosen = [index for index, flag in enumerate(same) if flag == wanted]
        metrics = _locality_metrics([before.locality[i] for i in chosen], [after.locality[i] for i in chosen])
        columns[column] = metrics["locality_unchanged"]
    return columns


def compare_scores(
    record: EditRecord, before: RecordScores, after: RecordScores, tokenizer
) -> dict[str, Any]:
    """One table row: the edit's success on ``record`` and what it changed elsewhere (``locality_*``
    over every probe; ``locality_neighbour`` and ``locality_same_subject`` by kind of probe)."""
    return {
        "record_id": record.record_id,
        "prompt": record.prompt,
        "target_new": record.target_new,
        "rewrite_acc": after.rewrite.accuracy,
        "rewrite_exact": after.rewrite.exact,
        "rephrase_acc": mean_or_none(score.accuracy for score in after.rephrase),
        **_locality_metrics(before.locality, after.locality),
        **_locality_by_kind(record, before, after),
        "portability_acc": mean_or_none(score.accuracy for score in after.portability),
        "pre_rewrite_acc": before.rewrite.accuracy,
        "pre_rephrase_acc": mean_or_none(score.accuracy for score in before.rephrase),
        # Teacher-forced argmax at the first target positions: what the model now predicts there.
        "prediction": tokenizer.decode(after.rewrite.predictions[:PREDICTION_TOKENS].tolist()),
        "prediction_before": tokenizer.decode(before.rewrite.predictions[:PREDICTION_TOKENS].tolist()),
    }


def aggregate(rows: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """Means of the numeric columns over the rows that have them, and ``score``."""
    aggregates: dict[str, float | None] = {"records": float(len(rows))}
    for column in AVERAGED_COLUMNS:
        if any(column in row for row in rows):
            aggregates[column] = mean_or_none(row.get(column) for row in rows)
    aggregates["score"] = mean_or_none(aggregates.get(column) for column in SCORE_COLUMNS)
    return aggregates


def _chunks(records: Sequence[EditRecord], size: int) -> Iterator[Sequence[EditRecord]]:
    for start in range(0, len(records), size):
        yield records[start : start + size]


def evaluate_edit(
    model_before: nn.Module,
    model_after: nn.Module,
    tokenizer,
    records: Sequence[EditRecord],
    *,
    batch_size: int = 16,
) -> EditEvaluation:
    """Compare two models (e.g. a base model and an edited copy) on ``records``."""
    rows, changes = [], {}
    for chunk in _chunks(records, batch_size):
        before = score_records(model_before, tokenizer, chunk, batch_size=batch_size)
        after = score_records(model_after, tokenizer, chunk, batch_size=batch_size)
        for record, old, new in zip(chunk, before, after, strict=True):
            rows.append(compare_scores(record, old, new, tokenizer))
            changes[record.record_id] = probe_changes(old, new)
    return EditEvaluation(rows, aggregate(rows), changes)


def edit_units(records: Sequence[EditRecord]) -> list[list[int]]:
    """Indexes of the records edited together: each record alone, or all the records of an edit group."""
    units: dict[tuple[str, object], list[int]] = {}
    for index, record in enumerate(records):
        key = ("group", record.edit_group) if record.edit_group is not None else ("record", index)
        units.setdefault(key, []).append(index)
    return list(units.values())


def _unit_chunks(units: list[list[int]], size: int) -> Iterator[list[list[int]]]:
    """Whole units, about ``size`` records at a time (a group is never split)."""
    chunk: list[list[int]] = []
    for unit in units:
        chunk.append(unit)
        if sum(map(len, chunk)) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def run_single_edits(
    editor: Editor,
    model: nn.Module,
    tokenizer,
    records: Sequence[EditRecord],
    *,
    batch_size: int = 16,
    on_progress: Callable[[int, int], None] | None = None,
) -> EditEvaluation:
    """The field's protocol: each record is edited on its own, scored, and undone before the next.

    Records of one ``edit_group`` (an MQuAKE case's facts) are edited together, as their benchmark
    does, and each gets its own row. ``edit_seconds`` in a row is the wall time of the ``editor.edit``
    call that made it. The model's weights are bit-identical afterwards (``EditResult.applied``
    restores the saved originals). Rows are in the order of ``records``.
    """
    rows: list[dict[str, Any]] = [{} for _ in records]
    done = 0
    for units in _unit_chunks(edit_units(records), batch_size):
        indexes = [index for unit in units for index in unit]
        # The edit cannot change these, so they are scored once for the whole chunk.
        before = score_records(model, tokenizer, [records[i] for i in indexes], batch_size=batch_size)
        before_by_index = dict(zip(indexes, before, strict=True))
        for unit in units:
            unit_records = [records[index] for index in unit]
            started = time.perf_counter()
            result = editor.edit(model, tokenizer, unit_records)
            seconds = time.perf_counter() - started
            with result.applied(model):
                after = score_records(model, tokenizer, unit_records, batch_size=batch_size)
            for index, record_after in zip(unit, after, strict=True):
                row = compare_scores(records[index], before_by_index[index], record_after, tokenizer)
                rows[index] = {**row, "edit_seconds": seconds}
                done += 1
                if on_progress is not None:
                    on_progress(done, len(records))
    return EditEvaluation(rows, aggregate(rows))


def run_batch_edit(
    editor: Editor, model: nn.Module, tokenizer, records: Sequence[EditRecord], *, batch_size: int = 16
) -> EditEvaluation:
    """All records edited in one ``editor.edit`` call and evaluated together; the model is restored after.

    The aggregate ``edit_seconds`` is the wall time of that one call.
    """
    started = time.perf_counter()
    result = editor.edit(model, tokenizer, records)
    seconds = time.perf_counter() - started
    rows = []
    for chunk in _chunks(records, batch_size):
        before = score_records(model, tokenizer, chunk, batch_size=batch_size)
        with result.applied(model):
            after = score_records(model, tokenizer, chunk, batch_size=batch_size)
        rows.extend(compare_scores(r, b, a, tokenizer) for r, b, a in zip(chunk, before, after, strict=True))
    aggregates = aggregate(rows)
    aggregates["edit_seconds"] = seconds
    return EditEvaluation(rows, aggregates)


@torch.no_grad()
def perplexity(model: nn.Module, tokenizer, texts: Sequence[str], *, batch_size: int = 16) -> float:
    """Token-weighted perplexity over ``texts`` (every token after the first is scored)."""
    if not texts:
        raise ValueError("perplexity needs at least one text")
    device = next(model.parameters()).device
    # Similar lengths share a batch, so little compute goes to padding.
    ordered = sorted(texts, key=len)
    nll_sum, token_count = 0.0, 0
    with eval_mode(model):
        for start in range(0, len(ordered), batch_size):
            batch = encode_texts(tokenizer, ordered[start : start + batch_size]).to(device)
            nll = token_nll(scored_logits(model, batch), batch.scored_targets)  # (scored,)
            nll_sum += float(nll.double().sum())
            token_count += nll.numel()
    return perplexity_from_nll(nll_sum, token_count)
