"""Teacher-forced scoring of records: every query against every answer that counts as right.

A query is a prompt with the answers that count: the record's target and its aliases for the rewrite
and rephrase prompts, a probe's answer and its aliases for portability and locality. Each answer is one
sequence, all sequences of all queries share the same forward passes (``batch_size`` sequences each,
logits only at scored positions), and a query's accuracy is the best over its answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from editing.core.forward import eval_mode, scored_logits
from editing.core.tokens import encode_batch
from editing.data.edit_record import EditRecord, dedupe
from editing.evaluation.metrics import exact_match, token_accuracy


@dataclass
class QueryScore:
    """One teacher-forced query: how well the model predicts the target after the prompt.

    With aliases, ``accuracy`` and ``exact`` are those of the best-scoring answer (``alias``: its
    position, 0 being the answer itself), while ``predictions`` and ``log_probs`` stay those of the
    answer itself: locality compares them before and after an edit, which needs the same tokens both times.
    """

    accuracy: float
    exact: bool
    predictions: torch.Tensor  # (target tokens,) argmax token ids, on the CPU
    log_probs: torch.Tensor | None = None  # (target tokens, vocab) float32, kept for locality probes only
    alias: int = 0


@dataclass
class RecordScores:
    rewrite: QueryScore
    rephrase: list[QueryScore] = field(default_factory=list)
    portability: list[QueryScore] = field(default_factory=list)
    locality: list[QueryScore] = field(default_factory=list)


@dataclass(frozen=True)
class _Query:
    record: int  # index of the record in the scored sequence
    kind: str  # rewrite, rephrase, portability or locality
    prompt: str
    answers: tuple[str, ...]  # the answer first, then its aliases


def _queries(records: Sequence[EditRecord]) -> list[_Query]:
    """Every query of every record, each with all the answers that count as right."""
    queries = []
    for index, record in enumerate(records):
        targets = dedupe(record.targets)
        queries.append(_Query(index, "rewrite", record.prompt, targets))
        queries.extend(_Query(index, "rephrase", prompt, targets) for prompt in record.rephrase_prompts)
        for kind, probes in (("portability", record.portability), ("locality", record.locality)):
            queries.extend(_Query(index, kind, probe.prompt, dedupe(probe.answers)) for probe in probes)
    return queries


@torch.no_grad()
def _score_sequences(
    model: nn.Module, tokenizer, sequences: Sequence[tuple[str, str, bool]]
) -> list[QueryScore]:
    """Score ``(prompt, answer, keep_log_probs)`` sequences in one forward pass."""
    device = next(model.parameters()).device
    batch = encode_batch(tokenizer, [s[0] for s in sequences], [s[1] for s in sequences]).to(device)
    logits = scored_logits(model, batch)  # (scored, vocab)
    targets, example = batch.scored_targets, batch.scored_example
    accuracy = token_accuracy(logits, targets, example, len(sequences)).tolist()
    exact = exact_match(logits, targets, example, len(sequences)).tolist()
    counts = torch.bincount(example, minlength=len(sequences)).tolist()
    scores = []
    # Positions are in row-major order, so each sequence's positions are one contiguous slice.
    for sequence, sequence_logits, acc, hit in zip(
        sequences, logits.split(counts), accuracy, exact, strict=True
    ):
        log_probs = torch.log_softmax(sequence_logits.float(), dim=-1).cpu() if sequence[2] else None
        scores.append(QueryScore(acc, bool(hit), sequence_logits.argmax(dim=-1).cpu(), log_probs))
    return scores


def _best(candidates: Sequence[QueryScore]) -> QueryScore:
    """The best accuracy over an answer and its aliases; the answer's own predictions (see QueryScore)."""
    best = max(range(len(candidates)), key=lambda position: candidates[position].accuracy)  # first on ties
    answer = candidates[0]
    return QueryScore(
        candidates[best].accuracy, candidates[best].exact, answer.predictions, answer.log_probs, alias=best
    )


def score_records(
    model: nn.Module, tokenizer, records: Sequence[EditRecord], *, batch_size: int = 16
) -> list[RecordScores]:
    """Score every query of every record against every alias, ``batch_size`` sequences per forward pass."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    queries = _queries(records)
    # Full distributions are kept only where locality needs them: the answer itself of a locality probe.
    sequences = [
        (query.prompt, answer, query.kind == "locality" and position == 0)
        for query in queries
        for position, answer in enumerate(query.answers)
    ]
    scored: list[QueryScore] = []
    with eval_mode(model):
        for start in range(0, len(sequences), batch_size):
            scored.extend(_score_sequences(model, tokenizer, sequences[start : start + batch_size]))
    grouped: list[dict[str, list[QueryScore]]] = [{} for _ in records]
    start = 0
    for query in queries:
        candidates = scored[start : start + len(query.answers)]
        start += len(query.answers)
        grouped[query.record].setdefault(query.kind, []).append(_best(candidates))
    return [
        RecordScores(
            rewrite=kinds["rewrite"][0],
            rephrase=kinds.get("rephrase", []),
            portability=kinds.get("portability", []),
            locality=kinds.get("locality", []),
        )
        for kinds in grouped
    ]
