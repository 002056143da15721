"""Score models on edit records and compare a model before and after an edit.

``score_records`` runs each record's queries once (the rewrite prompt, every rephrase and portability
probe, every locality probe), batched and only at scored positions, and keeps what comparisons need.
``compare_scores`` turns a before/after pair into one table row. On top of these sit the field's two
protocols: ``run_single_edits`` (each record edited on its own, then undone) and ``run_batch_edit`` (all
records in one edit). Records are processed in chunks, so memory does not grow with the record count.
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
from editing.core.tokens import encode_batch, encode_texts
from editing.data.records import EditRecord
from editing.evaluation.metrics import (
    accuracy_drawdown,
    exact_match,
    mean_kl,
    mean_or_none,
    token_accuracy,
    unchanged_fraction,
)
from editing.evaluation.metrics import (
    perplexity as perplexity_from_nll,
)

PREDICTION_TOKENS = 5  # target tokens decoded into a row's "prediction" column for display
# Row columns averaged into the aggregates (None values, e.g. no portability probes, are left out).
AVERAGED_COLUMNS = (
    "rewrite_acc",
    "rewrite_exact",
    "rephrase_acc",
    "locality_unchanged",
    "locality_kl",
    "locality_drawdown",
    "portability_acc",
    "pre_rewrite_acc",
    "pre_rephrase_acc",
    "edit_seconds",
)
SCORE_COLUMNS = ("rewrite_acc", "rephrase_acc", "locality_unchanged")


@dataclass
class QueryScore:
    """One teacher-forced query: how well the model predicts the target after the prompt."""

    accuracy: float
    exact: bool
    predictions: torch.Tensor  # (target tokens,) argmax token ids, on the CPU
    log_probs: torch.Tensor | None = None  # (target tokens, vocab) float32, kept for locality probes only


@dataclass
class RecordScores:
    rewrite: QueryScore
    rephrase: list[QueryScore] = field(default_factory=list)
    portability: list[QueryScore] = field(default_factory=list)
    locality: list[QueryScore] = field(default_factory=list)


@dataclass
class EditEvaluation:
    """One row per record (plain dicts) and the means over rows."""

    rows: list[dict[str, Any]]
    aggregates: dict[str, float | None]

    def to_json(self) -> dict[str, Any]:
        return {"rows": [dict(row) for row in self.rows], "aggregates": dict(self.aggregates)}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> EditEvaluation:
        return cls(rows=list(raw["rows"]), aggregates=dict(raw["aggregates"]))


def _queries(records: Sequence[EditRecord]) -> list[tuple[int, str, str, str]]:
    """(record index, kind, prompt, target) for every query of every record."""
    queries = []
    for index, record in enumerate(records):
        queries.append((index, "rewrite", record.prompt, record.target_new))
        queries.extend((index, "rephrase", prompt, record.target_new) for prompt in record.rephrase_prompts)
        queries.extend((index, "portability", probe.prompt, probe.answer) for probe in record.portability)
        queries.extend((index, "locality", probe.prompt, probe.answer) for probe in record.locality)
    return queries


@torch.no_grad()
def _score_queries(
    model: nn.Module, tokenizer, queries: Sequence[tuple[int, str, str, str]]
) -> list[QueryScore]:
    device = next(model.parameters()).device
    batch = encode_batch(tokenizer, [q[2] for q in queries], [q[3] for q in queries]).to(device)
    logits = scored_logits(model, batch)  # (scored, vocab)
    targets, example = batch.scored_targets, batch.scored_example
    accuracy = token_accuracy(logits, targets, example, len(queries)).tolist()
    exact = exact_match(logits, targets, example, len(queries)).tolist()
    counts = torch.bincount(example, minlength=len(queries)).tolist()
    scores = []
    # Positions are in row-major order, so each query's positions are one contiguous slice.
    for query, query_logits, acc, hit in zip(queries, logits.split(counts), accuracy, exact, strict=True):
        log_probs = None
        if query[1] == "locality":
            log_probs = torch.log_softmax(query_logits.float(), dim=-1).cpu()
        scores.append(QueryScore(acc, bool(hit), query_logits.argmax(dim=-1).cpu(), log_probs))
    return scores


def score_records(
    model: nn.Module, tokenizer, records: Sequence[EditRecord], *, batch_size: int = 16
) -> list[RecordScores]:
    """Score every query of every record, ``batch_size`` sequences per forward pass."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    queries = _queries(records)
    scores: list[QueryScore] = []
    with eval_mode(model):
        for start in range(0, len(queries), batch_size):
            scores.extend(_score_queries(model, tokenizer, queries[start : start + batch_size]))
    grouped: list[dict[str, list[QueryScore]]] = [{} for _ in records]
    for (index, kind, _prompt, _target), score in zip(queries, scores, strict=True):
        grouped[index].setdefault(kind, []).append(score)
    return [
        RecordScores(
            rewrite=kinds["rewrite"][0],
            rephrase=kinds.get("rephrase", []),
            portability=kinds.get("portability", []),
            locality=kinds.get("locality", []),
        )
        for kinds in grouped
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


def compare_scores(
    record: EditRecord, before: RecordScores, after: RecordScores, tokenizer
) -> dict[str, Any]:
    """One table row: the edit's success on ``record`` and what it changed elsewhere."""
    return {
        "record_id": record.record_id,
        "prompt": record.prompt,
        "target_new": record.target_new,
        "rewrite_acc": after.rewrite.accuracy,
        "rewrite_exact": after.rewrite.exact,
        "rephrase_acc": mean_or_none(score.accuracy for score in after.rephrase),
        **_locality_metrics(before.locality, after.locality),
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
    rows = []
    for chunk in _chunks(records, batch_size):
        before = score_records(model_before, tokenizer, chunk, batch_size=batch_size)
        after = score_records(model_after, tokenizer, chunk, batch_size=batch_size)
        rows.extend(compare_scores(r, b, a, tokenizer) for r, b, a in zip(chunk, before, after, strict=True))
    return EditEvaluation(rows, aggregate(rows))


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

    ``edit_seconds`` in each row is the wall time of ``editor.edit`` for that record. The model's
    weights are bit-identical afterwards (``EditResult.applied`` restores the saved originals).
    """
    rows = []
    for chunk in _chunks(records, batch_size):
        before = score_records(model, tokenizer, chunk, batch_size=batch_size)  # the edit cannot change these
        for record, record_before in zip(chunk, before, strict=True):
            started = time.perf_counter()
            result = editor.edit(model, tokenizer, [record])
            seconds = time.perf_counter() - started
            with result.applied(model):
                (record_after,) = score_records(model, tokenizer, [record], batch_size=batch_size)
            rows.append(
                {**compare_scores(record, record_before, record_after, tokenizer), "edit_seconds": seconds}
            )
            if on_progress is not None:
                on_progress(len(rows), len(records))
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
