"""Locality probes: prompts about other things whose answers an edit must leave unchanged.

The pool records the *current champion's* own greedy answers, so a locality check asks "did the answer
change?" rather than "is the answer right?". Per edit, ``select_locality`` takes the pool prompts most
similar to the edit prompt that are still about something else (hard neighbours, where an edit that
spreads too far shows first) plus a seeded random sample. Similarity is the cosine of mean-pooled last
hidden states of the model itself, so no embedding service is needed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random as random_module
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from editing.core.generate import greedy_complete, normalise_words
from editing.data.records import PromptAnswer, RecordError
from editing.evaluation.answers import first_clause

LOGGER = logging.getLogger(__name__)

POOL_FORMAT = "mend-locality-pool/1"
POOL_KIND = "pool"
HARD_KIND = "hard_neighbour"
RANDOM_KIND = "random"


@dataclass(frozen=True)
class RejectedPrompt:
    prompt: str
    reason: str


@dataclass(frozen=True)
class PoolBuild:
    """A locality pool and the prompts that could not join it, each with its reason."""

    pool: tuple[PromptAnswer, ...]
    rejected: tuple[RejectedPrompt, ...] = ()


@dataclass(frozen=True)
class PoolMetadata:
    """Which champion model answered the pool's prompts."""

    champion_version: str
    fingerprint: str
    size: int


def build_locality_pool(
    model: nn.Module, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 6
) -> PoolBuild:
    """The model's own greedy answer to each prompt, cut to its first clause (``first_clause``: what a
    changed answer means, not a changed trailing word); repeated prompts and empty answers are rejected."""
    unique: list[str] = []
    rejected: list[RejectedPrompt] = []
    seen: set[str] = set()
    for prompt in prompts:
        key = " ".join(prompt.casefold().split()) if isinstance(prompt, str) else ""
        if not key:
            rejected.append(RejectedPrompt(str(prompt), "empty prompt"))
            continue
        if key in seen:
            rejected.append(RejectedPrompt(prompt, "duplicate prompt"))
            continue
        seen.add(key)
        unique.append(prompt)
    completions = greedy_complete(model, tokenizer, unique, max_new_tokens=max_new_tokens) if unique else []
    pool = []
    for prompt, completion in zip(unique, completions, strict=True):
        if completion:
            pool.append(PromptAnswer(prompt, first_clause(completion), POOL_KIND))
        else:
            rejected.append(RejectedPrompt(prompt, "empty completion"))
    if rejected:
        LOGGER.warning("locality pool: %d of %d prompt(s) rejected", len(rejected), len(prompts))
    return PoolBuild(tuple(pool), tuple(rejected))


@torch.no_grad()
def prompt_embeddings(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    *,
    batch_size: int = 32,
    on_progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """(n, hidden) float32 on the CPU: the last hidden state averaged over real tokens, L2-normalised.
    ``on_progress(done, total)`` after each batch."""
    hidden_size = model.config.hidden_size
    device = next(model.parameters()).device
    # Batches of similar length waste little on padding; rows go back to the callers' order at the end.
    lengths = [len(ids) for ids in tokenizer(list(prompts))["input_ids"]] if prompts else []
    order = sorted(range(len(prompts)), key=lengths.__getitem__)
    rows = torch.zeros((len(prompts), hidden_size))
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(prompts), batch_size):
            batch = order[start : start + batch_size]
            encoded = tokenizer(
                [prompts[i] for i in batch], return_tensors="pt", padding=True, padding_side="right"
            )
            mask = encoded["attention_mask"].to(device)  # (batch, seq)
            # The base model ends with the final norm and skips the vocabulary projection we do not need.
            hidden = model.base_model(
                input_ids=encoded["input_ids"].to(device), attention_mask=mask
            ).last_hidden_state
            weights = mask.unsqueeze(-1).to(hidden.dtype)  # (batch, seq, 1)
            mean = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)  # (batch, hidden)
            rows[batch] = torch.nn.functional.normalize(mean.float(), dim=-1).cpu()
            if on_progress is not None:
                on_progress(min(start + batch_size, len(prompts)), len(prompts))
    finally:
        model.train(was_training)
    return rows


def mentions(text: str, phrase: str | None) -> bool:
    """Whether ``phrase`` occurs in ``text`` as whole words, ignoring case, accents and punctuation."""
    phrase_words = normalise_words(phrase or "")
    if not phrase_words:
        return False
    padded = f" {' '.join(normalise_words(text))} "
    return f" {' '.join(phrase_words)} " in padded


def _eligible(
    edit_prompt: str, subject: str | None, correction: str | None, pool: Sequence[PromptAnswer]
) -> list[int]:
    """Indices of pool prompts about something else than the edit."""
    edit_words = normalise_words(edit_prompt)
    return [
        index
        for index, item in enumerate(pool)
        if normalise_words(item.prompt) != edit_words
        and not mentions(item.prompt, subject)
        and not mentions(item.prompt, correction)
    ]


def _edit_rng(seed: int, edit_prompt: str) -> random_module.Random:
    # Seeded by the edit's own prompt, so an edit gets the same sample whatever else is in the batch.
    return random_module.Random(hashlib.sha256(f"{seed}\0{edit_prompt}".encode()).digest())


def _check_shapes(
    edit_prompts: Sequence[str],
    subjects: Sequence[str | None],
    corrections: Sequence[str | None] | None,
    pool: Sequence[PromptAnswer],
    pool_embeddings: torch.Tensor,
    edit_embeddings: torch.Tensor,
) -> None:
    if len(subjects) != len(edit_prompts):
        raise ValueError(f"{len(edit_prompts)} edit prompts but {len(subjects)} subjects")
    if corrections is not None and len(corrections) != len(edit_prompts):
        raise ValueError(f"{len(edit_prompts)} edit prompts but {len(corrections)} corrections")
    if pool_embeddings.ndim != 2 or pool_embeddings.shape[0] != len(pool):
        raise ValueError(
            f"pool_embeddings has shape {tuple(pool_embeddings.shape)}, pool has {len(pool)} prompts"
        )
    if edit_embeddings.ndim != 2 or edit_embeddings.shape[0] != len(edit_prompts):
        raise ValueError(
            f"edit_embeddings has shape {tuple(edit_embeddings.shape)}, {len(edit_prompts)} edits"
        )
    if edit_embeddings.shape[1] != pool_embeddings.shape[1]:
        raise ValueError("edit and pool embeddings differ in width")


def select_locality(
    edit_prompts: Sequence[str],
    subjects: Sequence[str | None],
    pool: Sequence[PromptAnswer],
    pool_embeddings: torch.Tensor,
    edit_embeddings: torch.Tensor,
    *,
    corrections: Sequence[str | None] | None = None,
    hard: int = 2,
    random: int = 2,
    seed: int = 0,
) -> list[list[PromptAnswer]]:
    """Per edit: ``hard`` nearest eligible pool prompts by cosine similarity, then ``random`` others.

    A pool prompt is eligible for an edit unless it equals the edit prompt (after normalisation) or
    mentions the edit's subject or correction as whole words. Ties in similarity go to the earlier pool
    entry; the random sample never repeats a prompt within one edit. Fewer probes come back (with a
    warning) when too few pool prompts are eligible.
    """
    _check_shapes(edit_prompts, subjects, corrections, pool, pool_embeddings, edit_embeddings)
    if not edit_prompts:
        return []
    pool_unit = torch.nn.functional.normalize(pool_embeddings.float(), dim=-1)  # (pool, hidden)
    edit_unit = torch.nn.functional.normalize(edit_embeddings.float(), dim=-1)  # (edits, hidden)
    similarity = edit_unit @ pool_unit.T  # (edits, pool)
    selections = []
    for row, edit_prompt in enumerate(edit_prompts):
        correction = corrections[row] if corrections is not None else None
        eligible = _eligible(edit_prompt, subjects[row], correction, pool)
        scores = similarity[row, eligible]
        ranked = [eligible[i] for i in torch.argsort(-scores, stable=True).tolist()]
        nearest = ranked[:hard]
        remaining = sorted(set(eligible) - set(nearest))
        sampled = _edit_rng(seed, edit_prompt).sample(remaining, min(random, len(remaining)))
        if len(nearest) + len(sampled) < hard + random:
            LOGGER.warning(
                "edit %d (%r): only %d eligible locality prompt(s) for %d wanted",
                row,
                edit_prompt,
                len(eligible),
                hard + random,
            )
        selections.append(
            [replace(pool[index], kind=HARD_KIND) for index in nearest]
            + [replace(pool[index], kind=RANDOM_KIND) for index in sampled]
        )
    return selections


def save_pool(
    path: str | Path, pool: Sequence[PromptAnswer], *, champion_version: str, fingerprint: str
) -> Path:
    """JSONL: a header line naming the champion and model fingerprint, then one line per pool prompt."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {
        "format": POOL_FORMAT,
        "champion_version": str(champion_version),
        "fingerprint": fingerprint,
        "size": len(pool),
    }
    lines = [json.dumps(header)]
    lines += [
        json.dumps({"prompt": p.prompt, "answer": p.answer, "kind": p.kind}, ensure_ascii=False) for p in pool
    ]
    partial = path.with_name(path.name + ".partial")
    partial.write_text("\n".join(lines) + "\n")
    partial.replace(path)  # a reader never sees half a pool
    return path


def _text_field(path: Path, line: int, raw: dict[str, Any], name: str, *, allow_empty: bool = False) -> str:
    value = raw.get(name)
    if not isinstance(value, str):
        raise RecordError(path, line, name, f"expected a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise RecordError(path, line, name, "empty string")
    return value


def _parse_line(path: Path, line: int, text: str) -> dict[str, Any]:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise RecordError(path, line, "<line>", f"invalid JSON: {error.msg}") from None
    if not isinstance(raw, dict):
        raise RecordError(path, line, "<line>", f"expected a JSON object, got {type(raw).__name__}")
    return raw


def load_pool(path: str | Path) -> tuple[list[PromptAnswer], PoolMetadata]:
    """Read a pool written by ``save_pool``; errors name the line (0 is the header) and the field."""
    path = Path(path)
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise RecordError(path, 0, "<header>", "empty file")
    header = _parse_line(path, 0, lines[0])
    if header.get("format") != POOL_FORMAT:
        raise RecordError(path, 0, "format", f"expected {POOL_FORMAT!r}, got {header.get('format')!r}")
    metadata = PoolMetadata(
        champion_version=_text_field(path, 0, header, "champion_version"),
        fingerprint=_text_field(path, 0, header, "fingerprint"),
        size=header.get("size", -1),
    )
    pool = []
    for line, text in enumerate(lines[1:], start=1):
        raw = _parse_line(path, line, text)
        kind = _text_field(path, line, raw, "kind", allow_empty=True) if "kind" in raw else ""
        pool.append(
            PromptAnswer(_text_field(path, line, raw, "prompt"), _text_field(path, line, raw, "answer"), kind)
        )
    if metadata.size != len(pool):
        raise RecordError(path, 0, "size", f"header says {metadata.size} prompt(s), file holds {len(pool)}")
    return pool, metadata
