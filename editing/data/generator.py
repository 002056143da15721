"""Editor training data built from the base model's own knowledge (issue 12).

For subjects of the CounterFact train and edit splits (kinds from ``relation_templates``), the base model
is asked each relation that fits the subject in its first wording; its greedy answer is kept as a *fact*
when the first answer token's probability reaches ``min_probability`` (what the model knows, so what an
edit elsewhere must leave alone). Each fact becomes one edit record:

* the edit: one wording of the relation for the subject -> another object of the same relation that the
  model gave for another subject (a counterfactual target of the right kind);
* the rephrase: another wording of the relation;
* locality of both kinds: a *neighbour* (another subject's fact of the same relation, kind
  ``neighborhood``) and a *same-subject* probe (this subject's fact of another relation, kind
  ``same_subject``), each with the model's own answer.

Nothing an evaluation scores is generated: every prompt is checked against ``scored_prompts`` and the
subjects of scored records are never used. The result is deterministic for a seed and a model, and is
cached as JSON per base-model fingerprint and settings (``cached_generation``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import nn

from editing.core.confidence import confident_answers
from editing.core.generate import normalise_words
from editing.data.edit_record import EditRecord, PromptAnswer
from editing.data.locality import mentions
from editing.data.protected_sources import SCORED_RECORDS, normalise, scored_prompts
from editing.data.records import read_records
from editing.data.relation_templates import Relation, RelationTemplates, load_templates, subject_kinds

LOGGER = logging.getLogger(__name__)
CACHE_FORMAT = "mend-generated-training/1"
SUBJECT_FILES = (
    "counterfact_easyedit_splits/counterfact-train.json",
    "counterfact_easyedit_splits/counterfact-edit.json",
)
NEIGHBOUR_KIND = "neighborhood"
SAME_SUBJECT_KIND = "same_subject"


@dataclass(frozen=True)
class GeneratorConfig:
    examples: int = 10_000  # edit records wanted (fewer when the subjects run out of confident facts)
    seed: int = 0
    # Probability of the first answer token under greedy decoding: below it the model does not know the
    # fact well enough for "unchanged" to mean anything.
    min_probability: float = 0.3
    max_new_tokens: int = 6
    batch_size: int = 64
    exclude_relations: tuple[str, ...] = ()  # relation ids left out (leave-relations-out training)

    def __post_init__(self) -> None:
        if self.examples < 1 or self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError("GeneratorConfig: examples, batch_size and max_new_tokens must be >= 1")
        if not 0.0 <= self.min_probability <= 1.0:
            raise ValueError(f"GeneratorConfig.min_probability must be in [0, 1], got {self.min_probability}")


@dataclass(frozen=True)
class Fact:
    subject: str
    relation: str  # relation id
    prompt: str  # the relation's first wording for the subject
    answer: str  # the model's greedy answer, cut to its first clause
    probability: float


@dataclass(frozen=True)
class Generation:
    records: list[EditRecord]
    info: dict[str, Any]  # counts: subjects asked, prompts, facts, what was left out and why


def scored_subjects(data_dir: Path) -> set[str]:
    """Subjects of the records some evaluation scores: never generated into training."""
    subjects = set()
    for relative in SCORED_RECORDS:
        for record in read_records(data_dir / relative).records:
            if record.subject:
                subjects.add(normalise(record.subject))
    return subjects


def _usable_answer(subject: str, answer: str) -> bool:
    # An answer that repeats its subject ("The capital of X is X") or holds no word is no fact.
    return bool(normalise_words(answer)) and not mentions(answer, subject) and len(answer) <= 60


def collect_facts(
    model: nn.Module,
    tokenizer,
    subjects: dict[str, frozenset[str]],
    templates: RelationTemplates,
    banned: set[str],
    config: GeneratorConfig,
    info: dict[str, int],
) -> list[Fact]:
    """Confident facts of subjects in a seeded order, until ``config.examples`` of them can become records
    (their relation has at least two distinct objects, so a counterfactual target exists)."""
    order = sorted(subjects)
    random.Random(config.seed).shuffle(order)
    facts: list[Fact] = []
    objects: dict[str, set[str]] = defaultdict(set)
    counts: dict[str, int] = defaultdict(int)
    position = usable = 0
    while position < len(order) and usable < config.examples:
        questions: list[tuple[str, Relation, str]] = []
        while position < len(order) and len(questions) < config.batch_size * 4:
            subject = order[position]
            position += 1
            for relation in templates.for_kinds(subjects[subject]):
                prompt = relation.prompt(0, subject)
                if normalise(prompt) in banned:
                    info["excluded_as_scored"] += 1
                    continue
                questions.append((subject, relation, prompt))
        # Screened: only questions that can reach min_probability are decoded (editing.core.confidence).
        answers = confident_answers(
            model, tokenizer, [q[2] for q in questions], max_new_tokens=config.max_new_tokens,
            batch_size=config.batch_size, min_probability=config.min_probability,
        )  # fmt: skip
        info["subjects_asked"], info["prompts_asked"] = position, info["prompts_asked"] + len(questions)
        for (subject, relation, prompt), (answer, probability) in zip(questions, answers, strict=True):
            if probability < config.min_probability:
                info["not_confident"] += 1
            elif not _usable_answer(subject, answer):
                info["unusable_answer"] += 1
            else:
                facts.append(Fact(subject, relation.relation_id, prompt, answer, probability))
                objects[relation.relation_id].add(normalise(answer))
                counts[relation.relation_id] += 1
        usable = sum(count for name, count in counts.items() if len(objects[name]) >= 2)
        LOGGER.info("generator: %d subjects asked, %d facts, %d usable of %d wanted", position, len(facts),
                    usable, config.examples)  # fmt: skip
    return facts


def build_records(
    facts: Sequence[Fact], templates: RelationTemplates, banned: set[str], seed: int, info: dict[str, int]
) -> list[EditRecord]:
    """One edit record per fact that has a counterfactual object, a neighbour and allowed wordings."""
    rng = random.Random(seed)
    relations = {relation.relation_id: relation for relation in templates.relations}
    by_relation: dict[str, list[Fact]] = defaultdict(list)
    by_subject: dict[str, list[Fact]] = defaultdict(list)
    for fact in facts:
        by_relation[fact.relation].append(fact)
        by_subject[fact.subject].append(fact)
    # Each relation's distinct objects, by normalised answer, in a fixed order.
    objects_of = {
        name: sorted({normalise(f.answer): f.answer for f in group}.items())
        for name, group in by_relation.items()
    }
    records = []
    for index, fact in enumerate(facts):
        relation = relations[fact.relation]
        # A subject has one fact per relation, so the relation's other facts are other subjects'.
        others = [f for f in by_relation[fact.relation] if f is not fact]
        own = normalise(fact.answer)
        objects = [answer for key, answer in objects_of[fact.relation] if key != own]
        if not objects:
            info["no_counterfactual"] += 1
            continue
        first, second = rng.sample(range(len(relation.wordings)), 2)
        prompt, rephrase = relation.prompt(first, fact.subject), relation.prompt(second, fact.subject)
        if normalise(prompt) in banned or normalise(rephrase) in banned:
            info["excluded_as_scored"] += 1
            continue
        target = rng.choice(objects)
        neighbour = rng.choice(others)
        locality = [PromptAnswer(neighbour.prompt, neighbour.answer, NEIGHBOUR_KIND)]
        same_subject = [f for f in by_subject[fact.subject] if f.relation != fact.relation]
        if same_subject:
            probe = rng.choice(same_subject)
            locality.append(PromptAnswer(probe.prompt, probe.answer, SAME_SUBJECT_KIND))
        else:
            info["no_same_subject_probe"] += 1
        records.append(
            EditRecord(
                record_id=f"generated-{fact.relation}-{index}",
                prompt=prompt,
                target_new=target,
                target_true=fact.answer,
                subject=fact.subject,
                rephrase_prompts=(rephrase,),
                locality=tuple(locality),
            )
        )
    return records


def generate_records(
    model: nn.Module,
    tokenizer,
    data_dir: str | Path,
    config: GeneratorConfig = GeneratorConfig(),
    *,
    templates: RelationTemplates | None = None,
) -> Generation:
    """Edit records from ``model``'s confident knowledge (see the module docstring)."""
    data_dir = Path(data_dir)
    templates = (templates or load_templates()).without(config.exclude_relations)
    banned = scored_prompts(data_dir)
    excluded_subjects = scored_subjects(data_dir)
    subject_records = [r for relative in SUBJECT_FILES for r in read_records(data_dir / relative).records]
    kinds = subject_kinds(subject_records, templates.cues)
    subjects = {s: k for s, k in kinds.items() if normalise(s) not in excluded_subjects}
    info: dict[str, int] = defaultdict(int)
    info["subjects_with_kind"], info["subjects_scored_elsewhere"] = len(kinds), len(kinds) - len(subjects)
    facts = collect_facts(model, tokenizer, subjects, templates, banned, config, info)
    records = build_records(facts, templates, banned, config.seed, info)[: config.examples]
    info.update(facts=len(facts), records=len(records), relations=len({f.relation for f in facts}))
    LOGGER.info("generated %d training records: %s", len(records), dict(info))
    return Generation(records, dict(info))


def cache_key(fingerprint: str, config: GeneratorConfig, templates_digest: str) -> str:
    settings = json.dumps({"config": asdict(config), "templates": templates_digest}, sort_keys=True)
    return f"generated-{fingerprint[:16]}-{hashlib.sha256(settings.encode()).hexdigest()[:12]}.json"


def cached_generation(
    cache_dir: str | Path,
    fingerprint: str,
    config: GeneratorConfig,
    build: Callable[[], Generation],
    *,
    templates_digest: str | None = None,
) -> tuple[Generation, bool]:
    """The generation cached for this base model and settings, else ``build()``, saved; and whether it
    was a cache hit. The file is JSON (never a pickle) and is refused if it names another model."""
    digest = templates_digest or load_templates().digest
    path = Path(cache_dir) / cache_key(fingerprint, config, digest)
    if path.is_file():
        raw = json.loads(path.read_text())
        if raw.get("format") != CACHE_FORMAT or raw.get("fingerprint") != fingerprint:
            raise ValueError(f"{path}: field 'format'/'fingerprint': not a generation for this base model")
        records = [EditRecord.from_json(item) for item in raw["records"]]
        return Generation(records, raw["info"]), True
    generation = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": CACHE_FORMAT, "fingerprint": fingerprint, "config": asdict(config),
               "info": generation.info, "records": [r.to_json() for r in generation.records]}  # fmt: skip
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(payload, ensure_ascii=False))
    partial.replace(path)  # a reader never sees half a file
    return generation, False
