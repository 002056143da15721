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
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from editing.core.forward import eval_mode
from editing.core.targets import EditScope
from editing.data.locality import mentions, prompt_embeddings
from editing.data.protected_sources import normalise
from editing.data.records import EditRecord, PromptAnswer
from editing.mend.protected import known_fact_batches

LOGGER = logging.getLogger(__name__)
BANK_FORMAT = "mend-neighbour-bank/1"
BANK_FILE = "neighbour_bank.safetensors"


class NeighbourBankError(ValueError):
    """A neighbour bank is malformed or belongs to another base model."""


@dataclass(frozen=True)
class NeighbourSettings:
    """How many bank facts protect each edit, and how hard (a multiple of the learned protection)."""

    per_edit: int = 0  # 0 switches neighbour protection off
    weight: float = 1.0

    def __post_init__(self) -> None:
        if self.per_edit < 0 or not self.weight >= 0:
            raise ValueError(f"neighbours: per_edit must be >= 0 and weight >= 0, got {self}")


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
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
        if metadata.get("format") != BANK_FORMAT:
            raise NeighbourBankError(f"{path}: not a {BANK_FORMAT} file")
        if metadata.get("base_fingerprint") != base_fingerprint:
            raise NeighbourBankError(f"{path}: measured on another base model")
        facts = tuple(
            PromptAnswer(prompt, answer, kind) for prompt, answer, kind in json.loads(metadata["facts"])
        )
        keys = {key.removeprefix("keys/"): value for key, value in tensors.items() if key.startswith("keys/")}
        return cls(facts, tensors["embeddings"], keys, tensors["row_fact"], base_fingerprint)


@torch.no_grad()
def build_neighbour_bank(
    model: nn.Module,
    tokenizer,
    scope: EditScope,
    base_fingerprint: str,
    facts: Sequence[PromptAnswer],
    *,
    batch_size: int = 32,
) -> NeighbourBank:
    """The facts that ``model`` answers right (its greedy first token is the answer's), with their keys
    and prompt embeddings."""
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
    if not kept:  # then no edit has neighbours to protect: the solve is the plain one
        LOGGER.warning("neighbour bank: the model answers none of %d facts right", len(facts))
    embeddings = prompt_embeddings(model, tokenizer, [fact.prompt for fact in kept])
    LOGGER.info("neighbour bank: %d of %d facts known", len(kept), len(facts))
    stacked = {name: torch.cat(parts) for name, parts in keys.items()}
    return NeighbourBank(tuple(kept), embeddings, stacked, torch.cat(row_fact), base_fingerprint)


def neighbour_rows(
    bank: NeighbourBank,
    model: nn.Module,
    tokenizer,
    records: Sequence[EditRecord],
    settings: NeighbourSettings,
    protect: dict[str, float],
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per weight, the zero-shift rows ``sqrt(protect * weight) k_n`` (rows, d_in) of every record's
    nearest facts, and (rows,) the record each row belongs to."""
    embeddings = prompt_embeddings(
        model, tokenizer, [record.prompt for record in records]
    )  # (records, hidden)
    fact_rows, owners = [], []
    for index, (record, embedding) in enumerate(zip(records, embeddings, strict=True)):
        for fact in bank.nearest(embedding, record.subject, settings.per_edit):
            rows = torch.nonzero(bank.row_fact == fact).flatten()
            fact_rows.append(rows)
            owners.append(torch.full((len(rows),), index, dtype=torch.long))
    selected = torch.cat(fact_rows) if fact_rows else torch.zeros(0, dtype=torch.long)
    scale = {name: (protect[name] * settings.weight) ** 0.5 for name in bank.keys}
    keys = {name: scale[name] * bank.keys[name][selected] for name in bank.keys}
    return keys, torch.cat(owners) if owners else torch.zeros(0, dtype=torch.long)
