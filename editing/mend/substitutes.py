"""Same-wording neighbours: an edit's own prompt with its subject swapped for subjects like it.

The facts an edit is most likely to break are those asked in its own words about a similar subject: an
edit of "The official language of Iran is" moves "The official language of Egypt is" far more than any
fact of a general bank (the demo's locality regressions are all of this kind). No fixed bank can hold every
wording a flag arrives in, so the neighbours are made per edit: the edit's prompt with its subject cut out
is a template; the subjects nearest to the edited one (by the model's own embedding of the names) fill
it; the base model answers; the confident answers are facts to hold in place, as zero-shift rows of the
solve (``editing.mend.neighbours``).

The subject pool excludes every subject that a caller's scored prompts mention (``without_mentioned``:
the gate's locality pool, the flags), so a gate probe is never protected by name: what the gate sees is
protection carrying over from other subjects, as it must for facts nobody listed.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from editing.config import SUBJECT_FREE_FILLERS
from editing.core.confidence import confident_answers
from editing.core.generate import normalise_words
from editing.core.snapshot import read_base_model_file
from editing.data.generator import SUBJECT_FILES, scored_subjects
from editing.data.locality import prompt_embeddings
from editing.data.protected_sources import normalise
from editing.data.records import EditRecord, PromptAnswer, read_records

LOGGER = logging.getLogger(__name__)
POOL_FORMAT = "mend-subject-pool/1"
POOL_FILE = "subject_pool.safetensors"
SUBSTITUTE_KIND = "substitute"
# An edit's wording about no one ("it was painted by", fillers in ``SUBJECT_FREE_FILLERS``) carries the
# wording's own direction in the keys, without a subject's; the model's answer there is a property of the
# wording, so no confidence is asked of it.
SUBJECT_FREE_KIND = "subject_free"
_LONGEST_SUBJECT = 8  # words: longer names are not looked for in scored prompts (and are rare)


class SubjectPoolError(ValueError):
    """A subject pool is malformed or belongs to another base model."""


def subject_name(text: str) -> str:
    """A name as the pool, the exclusions and the siblings compare it: its normalised words."""
    return " ".join(normalise_words(text))


@dataclass
class SubjectPool:
    """Subject names and the model's embeddings of them, (subjects, hidden), L2-normalised."""

    subjects: tuple[str, ...]
    embeddings: torch.Tensor
    base_fingerprint: str
    # Names (normalised words) that ``without_mentioned`` took out: no neighbour made elsewhere may use
    # them either (editing.mend.siblings).
    excluded_names: frozenset[str] = frozenset()

    def without_mentioned(self, prompts: Iterable[str]) -> SubjectPool:
        """The pool less every subject named (as whole words) in one of ``prompts``."""
        named = mentioned_names(prompts)
        keep = [i for i, subject in enumerate(self.subjects) if subject_name(subject) not in named]
        return SubjectPool(
            tuple(self.subjects[i] for i in keep), self.embeddings[keep], self.base_fingerprint,
            self.excluded_names | named,
        )  # fmt: skip

    def nearest(self, embedding: torch.Tensor, count: int, exclude: set[str]) -> list[str]:
        """Up to ``count`` subjects nearest to ``embedding`` (hidden,), none whose name is in ``exclude``."""
        order = torch.argsort(self.embeddings @ embedding, descending=True).tolist()
        chosen: list[str] = []
        for index in order:
            if subject_name(self.subjects[index]) not in exclude:
                chosen.append(self.subjects[index])
                if len(chosen) == count:
                    break
        return chosen

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / POOL_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        metadata = {"format": POOL_FORMAT, "base_fingerprint": self.base_fingerprint,
                    "subjects": json.dumps(list(self.subjects))}  # fmt: skip
        save_file({"embeddings": self.embeddings.contiguous()}, str(path), metadata=metadata)
        return path

    @classmethod
    def load(cls, directory: str | Path, *, base_fingerprint: str) -> SubjectPool:
        path = Path(directory) / POOL_FILE
        metadata, tensors = read_base_model_file(path, POOL_FORMAT, base_fingerprint, SubjectPoolError)
        subjects, embeddings = tuple(json.loads(metadata["subjects"])), tensors["embeddings"]
        if embeddings.shape[0] != len(subjects):
            raise SubjectPoolError(f"{path}: {embeddings.shape[0]} embeddings for {len(subjects)} subjects")
        return cls(subjects, embeddings, base_fingerprint)


def mentioned_names(prompts: Iterable[str]) -> frozenset[str]:
    """Every phrase of up to ``_LONGEST_SUBJECT`` words in ``prompts``, as normalised words: the names
    they may mention."""
    named: set[str] = set()
    for prompt in prompts:
        words = normalise_words(prompt)
        for size in range(1, _LONGEST_SUBJECT + 1):
            for start in range(len(words) - size + 1):
                phrase = " ".join(words[start : start + size])
                # A possessive loses its apostrophe ("Germany's" -> "germanys"): name both readings.
                named.update((phrase, phrase.removesuffix("s")))
    return frozenset(named)


def candidate_subjects(data_dir: str | Path) -> list[str]:
    """Subjects of CounterFact's train and edit splits, less every subject that an evaluation scores."""
    data_dir = Path(data_dir)
    scored = scored_subjects(data_dir)
    return [
        record.subject
        for relative in SUBJECT_FILES
        for record in read_records(data_dir / relative).records
        if record.subject and normalise(record.subject) not in scored
    ]


def build_subject_pool(
    model: nn.Module,
    tokenizer,
    subjects: Sequence[str],
    base_fingerprint: str,
    on_progress: Callable[[int, int], None] | None = None,
) -> SubjectPool:
    """The distinct non-empty ``subjects`` (first spelling kept) with their embeddings;
    ``on_progress(done, total)`` as they are embedded."""
    first_spelling: dict[str, str] = {}
    for subject in subjects:
        if subject_name(subject):
            first_spelling.setdefault(subject_name(subject), subject.strip())
    unique = list(first_spelling.values())
    # Names are a few tokens long: large batches keep the per-call overhead of 30 blocks small.
    embeddings = prompt_embeddings(model, tokenizer, unique, batch_size=256, on_progress=on_progress)
    return SubjectPool(tuple(unique), embeddings, base_fingerprint)


def cached_subject_pool(directory: str | Path, model: nn.Module, tokenizer, data_dir: str | Path,
                        base_fingerprint: str,
                        on_progress: Callable[[int, int], None] | None = None) -> SubjectPool:  # fmt: skip
    """The pool of ``candidate_subjects(data_dir)`` saved in ``directory``, else embedded now (about a
    minute on two cores, reported to ``on_progress``) and saved there."""
    if (Path(directory) / POOL_FILE).is_file():
        return SubjectPool.load(directory, base_fingerprint=base_fingerprint)
    started = time.perf_counter()
    pool = build_subject_pool(model, tokenizer, candidate_subjects(data_dir), base_fingerprint, on_progress)
    pool.save(directory)
    LOGGER.info("embedded %d subjects in %.0f s", len(pool.subjects), time.perf_counter() - started)
    return pool


def template_of(record: EditRecord) -> str | None:
    """The record's prompt with its subject replaced by ``{}``, or None when the prompt does not name it."""
    if not record.subject or not record.subject.strip():
        return None
    match = re.search(re.escape(record.subject.strip()), record.prompt, flags=re.IGNORECASE)
    if match is None:
        return None
    return (
        record.prompt[: match.start()].replace("{", "{{").replace("}", "}}")
        + "{}"
        + (record.prompt[match.end() :].replace("{", "{{").replace("}", "}}"))
    )


@torch.no_grad()
def substitute_facts(
    model: nn.Module,
    tokenizer,
    records: Sequence[EditRecord],
    pool: SubjectPool,
    count: int,
    *,
    min_probability: float = 0.3,
    candidates_per_fact: int = 3,
) -> list[list[PromptAnswer]]:
    """Per record, up to ``count`` facts in its own wording about the pool's nearest subjects that the
    base ``model`` answers with a first-token probability of at least ``min_probability``. No subject
    of any of ``records`` is used: one edit must not hold another's subject in place."""
    busy = {subject_name(r.subject) for r in records if r.subject}
    templates = [template_of(record) for record in records]
    named = [i for i, template in enumerate(templates) if template is not None]
    facts: list[list[PromptAnswer]] = [[] for _ in records]
    if not named or count < 1 or not pool.subjects:
        return facts
    embeddings = prompt_embeddings(model, tokenizer, [records[i].subject for i in named])  # (named, hidden)
    questions: list[tuple[int, str]] = []  # (record index, prompt)
    for index, embedding in zip(named, embeddings, strict=True):
        for subject in pool.nearest(embedding, count * candidates_per_fact, busy):
            questions.append((index, templates[index].format(subject)))
    return answered_facts(model, tokenizer, questions, facts, count, SUBSTITUTE_KIND, min_probability)


def answered_facts(
    model: nn.Module,
    tokenizer,
    questions: Sequence[tuple[int, str]],
    facts: list[list[PromptAnswer]],
    count: int,
    kind: str,
    min_probability: float,
) -> list[list[PromptAnswer]]:
    """``facts`` with each (record index, prompt) of ``questions``, in order, added to its record's list
    as a fact of ``kind`` with the base ``model``'s greedy answer, while the list is shorter than
    ``count`` and where the answer has words and a first-token probability of ``min_probability``."""
    answers = confident_answers(
        model, tokenizer, [prompt for _, prompt in questions], max_new_tokens=4, batch_size=64,
        min_probability=min_probability,
    )  # fmt: skip
    for (index, prompt), (answer, probability) in zip(questions, answers, strict=True):
        if probability >= min_probability and normalise_words(answer) and len(facts[index]) < count:
            facts[index].append(PromptAnswer(prompt, answer, kind))
    return facts


@torch.no_grad()
def subject_free_facts(
    model: nn.Module, tokenizer, records: Sequence[EditRecord], count: int
) -> list[list[PromptAnswer]]:
    """Per record, its own wording with the first ``count`` of ``SUBJECT_FREE_FILLERS`` in its subject's
    place, each with the base ``model``'s greedy answer. As zero-shift rows they hold the wording itself in
    place, so that an edit has to ride on what is particular to its subject: same-wording neighbours need
    subjects of the right kind in the pool ("The Starry Night was painted by" finds no paintings among
    CounterFact's names, and its edit moved "The Mona Lisa was painted by"); these need none."""
    if not 0 <= count <= len(SUBJECT_FREE_FILLERS):
        raise ValueError(
            f"subject-free fillers: count must be in [0, {len(SUBJECT_FREE_FILLERS)}], got {count}"
        )
    templates = [template_of(record) for record in records]
    asked = [
        (index, template.format(filler))
        for index, template in enumerate(templates)
        if template is not None
        for filler in SUBJECT_FREE_FILLERS[:count]
    ]
    # Every answer with words counts (no confidence asked); a wordless one ("...") has no tokens to hold.
    facts: list[list[PromptAnswer]] = [[] for _ in records]
    return answered_facts(model, tokenizer, asked, facts, count, SUBJECT_FREE_KIND, min_probability=0.0)
