"""Neighbour protection: at edit time, each edit's nearest known facts are held in place by the solve.

The protected second moment (``editing.mend.protected``) keeps an update off the *typical* directions of
general text and known facts. It cannot keep one relation's edit off that relation's other subjects: the
key of "The official language of Iran is" and that of "The official language of Egypt is" differ in a
direction that an average over thousands of tokens barely weighs, so a night that corrects Iran's
language also moves Egypt's (the demo's locality regressions). Neighbour protection adds, per edit, the
keys of the ``per_edit`` facts nearest to its prompt as rows with *zero* value shift::

    min_S  sum_i ||S u_i - v_i||^2  +  ridge ||S||^2  +  protect * E_p ||S k_p||^2
           +  protect * weight * sum_n ||S k_n||^2

which is the same least-squares solve with the rows ``sqrt(protect * weight) k_n -> 0`` appended
(``EditRows`` with zero pseudo keys and values, so ``sum`` aggregation ignores them). They belong to their
edit's record, so a ledger caches, selects and rolls them back with it.

The bank holds facts the base model already answers right, from sources no gate or benchmark scores
(``editing.data.protected_sources``); "nearest" is the cosine of the model's own prompt embeddings
(``editing.data.locality.prompt_embeddings``). A fact naming the edited subject is never a neighbour of
that edit: an edit may have to change it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from editing.config import SUBJECT_FREE_FILLERS
from editing.core.forward import eval_mode
from editing.core.snapshot import read_base_model_file
from editing.core.targets import EditScope
from editing.data.locality import mentions, prompt_embeddings
from editing.data.protected_sources import normalise
from editing.data.records import EditRecord, PromptAnswer
from editing.mend.protected import known_fact_batches
from editing.mend.siblings import sibling_facts
from editing.mend.substitutes import SubjectPool, subject_free_facts, substitute_facts

LOGGER = logging.getLogger(__name__)
BANK_FORMAT = "mend-neighbour-bank/1"
BANK_FILE = "neighbour_bank.safetensors"


class NeighbourBankError(ValueError):
    """A neighbour bank is malformed or belongs to another base model."""


@dataclass(frozen=True)
class NeighbourSettings:
    """How many bank facts protect each edit, and how hard (a multiple of the learned protection)."""

    per_edit: int = 0  # nearest bank facts per edit (0: none)
    weight: float = 1.0
    # Same-wording neighbours per edit (editing.mend.substitutes; 0: none), kept when the base model's
    # first answer token has at least this probability.
    substitutes: int = 0
    min_probability: float = 0.3
    # The edit's wording about no particular subject, per edit (editing.mend.substitutes; 0: none).
    subject_free: int = 0
    # The edit's wording about subjects the base model itself puts in place of the subject's last word,
    # per edit (editing.mend.siblings; 0: none), whatever the model answers there.
    siblings: int = 0

    def __post_init__(self) -> None:
        counts = (self.per_edit, self.substitutes, self.subject_free, self.siblings)
        if min(counts) < 0 or not self.weight >= 0:
            raise ValueError(
                f"neighbours: per_edit, substitutes, subject_free, siblings and weight must be >= 0, got {self}"
            )
        if self.subject_free > len(SUBJECT_FREE_FILLERS):
            raise ValueError(
                f"neighbours: subject_free is at most {len(SUBJECT_FREE_FILLERS)}, got {self.subject_free}"
            )
        if not 0.0 <= self.min_probability <= 1.0:
            raise ValueError(f"neighbours: min_probability must be in [0, 1], got {self.min_probability}")

    @property
    def enabled(self) -> bool:
        return bool(self.per_edit or self.substitutes or self.subject_free or self.siblings)


@dataclass
class NeighbourBank:
    """Known facts, their prompt embeddings (facts, hidden) and, per edited weight, their keys: the layer
    inputs at every position that predicts an answer token, ``keys[name]`` (rows, d_in) with
    ``row_fact`` (rows,) naming each row's fact."""

    facts: tuple[PromptAnswer, ...]
    embeddings: torch.Tensor
    keys: dict[str, torch.Tensor]
    row_fact: torch.Tensor
    base_fingerprint: str

    def nearest(self, embedding: torch.Tensor, subject: str | None, count: int) -> list[int]:
        """Indices of the ``count`` facts nearest to one prompt's ``embedding`` (hidden,), none that
        names ``subject``."""
        order = torch.argsort(self.embeddings @ embedding, descending=True).tolist()
        return [i for i in order if not mentions(self.facts[i].prompt, subject)][:count]

    def without(self, prompts: Sequence[str]) -> NeighbourBank:
        """The bank less any fact whose prompt is among ``prompts`` (say, what this store's gate scores)."""
        banned = {normalise(prompt) for prompt in prompts}
        keep = [i for i, fact in enumerate(self.facts) if normalise(fact.prompt) not in banned]
        if len(keep) == len(self.facts):
            return self
        renumber = torch.full((len(self.facts),), -1, dtype=torch.long)
        renumber[keep] = torch.arange(len(keep))
        rows = renumber[self.row_fact] >= 0  # (rows,) bool
        return NeighbourBank(
            tuple(self.facts[i] for i in keep), self.embeddings[keep],
            {name: keys[rows] for name, keys in self.keys.items()}, renumber[self.row_fact][rows],
            self.base_fingerprint,
        )  # fmt: skip

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / BANK_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"embeddings": self.embeddings.contiguous(), "row_fact": self.row_fact.to(torch.int64)}
        tensors.update({f"keys/{name}": keys.contiguous() for name, keys in self.keys.items()})
        facts = [[fact.prompt, fact.answer, fact.kind] for fact in self.facts]
        metadata = {
            "format": BANK_FORMAT,
            "base_fingerprint": self.base_fingerprint,
            "facts": json.dumps(facts),
        }
        save_file(tensors, str(path), metadata=metadata)
        return path

    @classmethod
    def load(cls, directory: str | Path, *, base_fingerprint: str) -> NeighbourBank:
        path = Path(directory) / BANK_FILE
        metadata, tensors = read_base_model_file(path, BANK_FORMAT, base_fingerprint, NeighbourBankError)
        facts = tuple(
            PromptAnswer(prompt, answer, kind) for prompt, answer, kind in json.loads(metadata["facts"])
        )
        keys = {key.removeprefix("keys/"): value for key, value in tensors.items() if key.startswith("keys/")}
        return cls(facts, tensors["embeddings"], keys, tensors["row_fact"], base_fingerprint)


@torch.no_grad()
def known_fact_keys(
    model: nn.Module, tokenizer, scope: EditScope, facts: Sequence[PromptAnswer], *, batch_size: int = 32
) -> tuple[tuple[PromptAnswer, ...], dict[str, torch.Tensor], torch.Tensor]:
    """The facts that ``model`` answers right (its greedy first token is the answer's), per weight the
    keys at their answer positions (rows, d_in), and (rows,) the kept fact of each row."""
    kept: list[PromptAnswer] = []
    keys: dict[str, list[torch.Tensor]] = {name: [] for name in scope.weight_names}
    row_fact: list[torch.Tensor] = []
    with eval_mode(model):
        for chunk, batch, known, inputs in known_fact_batches(model, tokenizer, scope, facts, batch_size):
            examples = torch.arange(len(chunk), device=known.device)
            scored = torch.zeros_like(batch.attention_mask, dtype=torch.bool)  # (batch, seq)
            scored[:, :-1] = batch.prediction_mask & known[:, None]
            for name in scope.weight_names:
                keys[name].append(inputs[name][scored].float().cpu())  # (rows, d_in)
            fact_of_row = examples[:, None].expand_as(scored)[scored].cpu()  # (rows,) index in chunk
            renumber = torch.cumsum(known.cpu().long(), dim=0) - 1 + len(kept)  # (batch,) index in kept
            row_fact.append(renumber[fact_of_row])
            kept += [fact for fact, is_known in zip(chunk, known.tolist(), strict=True) if is_known]
    stacked = {name: torch.cat(parts) for name, parts in keys.items()}
    return tuple(kept), stacked, torch.cat(row_fact)


def build_neighbour_bank(
    model: nn.Module,
    tokenizer,
    scope: EditScope,
    base_fingerprint: str,
    facts: Sequence[PromptAnswer],
    *,
    batch_size: int = 32,
) -> NeighbourBank:
    """The facts that ``model`` answers right, with their keys and prompt embeddings."""
    kept, keys, row_fact = known_fact_keys(model, tokenizer, scope, facts, batch_size=batch_size)
    if not kept:  # then no edit has neighbours to protect: the solve is the plain one
        LOGGER.warning("neighbour bank: the model answers none of %d facts right", len(facts))
    embeddings = prompt_embeddings(model, tokenizer, [fact.prompt for fact in kept])
    LOGGER.info("neighbour bank: %d of %d facts known", len(kept), len(facts))
    return NeighbourBank(kept, embeddings, keys, row_fact, base_fingerprint)


def _rows_of(
    row_fact: torch.Tensor, facts_by_record: Sequence[Sequence[int]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows (by ``row_fact``, (rows,) each row's fact) of each record's facts and (rows,) their record."""
    fact_rows, owners = [], []
    for index, facts in enumerate(facts_by_record):
        for fact in facts:
            rows = torch.nonzero(row_fact == fact).flatten()
            fact_rows.append(rows)
            owners.append(torch.full((len(rows),), index, dtype=torch.long))
    empty = torch.zeros(0, dtype=torch.long)
    return (torch.cat(fact_rows) if fact_rows else empty), (torch.cat(owners) if owners else empty)


def _substitute_part(
    model, tokenizer, records, subjects: SubjectPool | None, settings: NeighbourSettings, scope
):
    """Per weight the keys of the records' same-wording neighbours, subject-free wordings and sibling
    subjects (rows, d_in), and (rows,) the record of each row; None when no record has one."""
    kinds: list[list[list[PromptAnswer]]] = []  # per kind of neighbour, per record, its facts
    if subjects is not None and settings.substitutes:
        kinds.append(substitute_facts(model, tokenizer, records, subjects, settings.substitutes,
                                      min_probability=settings.min_probability))  # fmt: skip
    if settings.subject_free:
        kinds.append(subject_free_facts(model, tokenizer, records, settings.subject_free))
    if settings.siblings:
        excluded = subjects.excluded_names if subjects is not None else frozenset()
        kinds.append(sibling_facts(model, tokenizer, records, settings.siblings, excluded=excluded))
    wanted = [[fact for facts in kinds for fact in facts[index]] for index in range(len(records))]
    unique = list({fact.prompt: fact for facts in wanted for fact in facts}.values())
    if not unique:
        return None
    kept, keys, row_fact = known_fact_keys(model, tokenizer, scope, unique)
    position = {fact.prompt: i for i, fact in enumerate(kept)}  # a fact the model misses has none
    selected, owners = _rows_of(
        row_fact, [[position[f.prompt] for f in facts if f.prompt in position] for facts in wanted]
    )
    return {name: rows[selected] for name, rows in keys.items()}, owners


def neighbour_rows(
    bank: NeighbourBank | None,
    model: nn.Module,
    tokenizer,
    records: Sequence[EditRecord],
    settings: NeighbourSettings,
    protect: dict[str, float],
    *,
    subjects: SubjectPool | None = None,
    scope: EditScope | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per weight, the zero-shift rows ``sqrt(protect * weight) k_n`` (rows, d_in) of every record's
    nearest bank facts and same-wording neighbours, and (rows,) the record each row belongs to."""
    parts: list[tuple[dict[str, torch.Tensor], torch.Tensor]] = []
    if bank is not None and settings.per_edit:
        embeddings = prompt_embeddings(
            model, tokenizer, [record.prompt for record in records]
        )  # (records, hidden)
        nearest = [
            bank.nearest(embedding, record.subject, settings.per_edit)
            for record, embedding in zip(records, embeddings, strict=True)
        ]
        selected, owners = _rows_of(bank.row_fact, nearest)
        parts.append(({name: keys[selected] for name, keys in bank.keys.items()}, owners))
    if (subjects is not None and settings.substitutes) or settings.subject_free or settings.siblings:
        if scope is None:
            raise ValueError("same-wording neighbours need the editor's scope to measure their keys")
        made = _substitute_part(model, tokenizer, records, subjects, settings, scope)
        if made is not None:
            parts.append(made)
    if not parts:
        return {}, torch.zeros(0, dtype=torch.long)
    scale = {name: (protect[name] * settings.weight) ** 0.5 for name in protect}
    keys = {name: scale[name] * torch.cat([part[0][name] for part in parts]) for name in protect}
    return keys, torch.cat([part[1] for part in parts])
