"""The relation templates the training-data generator fills (``relation_templates.json``) and the kinds of
the subjects it fills them with.

CounterFact covers a few dozen relations in a few wordings each; an editor trained on it alone learns
those templates rather than editing (issue 12). The templates here were written for this project: many
relations, each with several wordings that are all answered by the same kind of phrase. Which relations
fit a subject is decided by its *kind* (person, country, company, ...), read from the subject's own
CounterFact prompts through cues ("mother tongue" marks a person), never guessed from its name.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from editing.data.edit_record import EditRecord

SUBJECT = "{}"
TEMPLATES_FILE = "relation_templates.json"


class TemplateError(ValueError):
    """The templates file is malformed; names the relation (or cue) and the field."""


@dataclass(frozen=True)
class Relation:
    relation_id: str
    name: str
    subject_kind: str
    wordings: tuple[str, ...]  # each holds "{}" once; the first is the one the base model is asked

    def prompt(self, wording: int, subject: str) -> str:
        return self.wordings[wording].replace(SUBJECT, subject, 1)


@dataclass(frozen=True)
class SubjectCue:
    cue: str  # text of a CounterFact template ("{}" stands for the subject)
    kinds: tuple[str, ...]


@dataclass(frozen=True)
class RelationTemplates:
    relations: tuple[Relation, ...]
    cues: tuple[SubjectCue, ...]
    digest: str  # sha256 of the file's text: part of the generator's cache key

    def for_kinds(self, kinds: Iterable[str]) -> list[Relation]:
        wanted = set(kinds)
        return [relation for relation in self.relations if relation.subject_kind in wanted]

    def without(self, relation_ids: Iterable[str]) -> RelationTemplates:
        """These templates less the named relations (leave-relations-out training)."""
        dropped = set(relation_ids)
        kept = tuple(relation for relation in self.relations if relation.relation_id not in dropped)
        return RelationTemplates(kept, self.cues, f"{self.digest}-without-{sorted(dropped)}")


def _text_list(value: object, where: str, field_name: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise TemplateError(f"{where}: field {field_name!r}: expected a non-empty list of non-empty strings")
    return tuple(value)


def _relation(raw: object, position: int) -> Relation:
    if not isinstance(raw, dict):
        raise TemplateError(f"relations[{position}]: expected an object")
    for name in ("id", "name", "subject"):
        if not isinstance(raw.get(name), str) or not raw[name].strip():
            raise TemplateError(f"relations[{position}]: field {name!r}: expected a non-empty string")
    where = f"relation {raw['id']}"
    wordings = _text_list(raw.get("wordings"), where, "wordings")
    # Paraphrases come from the other wordings, so a relation needs at least two.
    if len(wordings) < 2:
        raise TemplateError(f"{where}: field 'wordings': needs at least two wordings")
    for wording in wordings:
        if wording.count(SUBJECT) != 1:
            raise TemplateError(f"{where}: field 'wordings': {wording!r} must hold {SUBJECT} exactly once")
    if len(set(wordings)) != len(wordings):
        raise TemplateError(f"{where}: field 'wordings': repeated wording")
    return Relation(raw["id"], raw["name"], raw["subject"], wordings)


def parse_templates(text: str, source: str = TEMPLATES_FILE) -> RelationTemplates:
    """Validate and read a templates file's text; errors name the relation or cue and the field."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise TemplateError(f"{source}: invalid JSON: {error.msg} (line {error.lineno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("relations"), list):
        raise TemplateError(f"{source}: expected an object with a 'relations' list")
    relations = tuple(_relation(raw, position) for position, raw in enumerate(data["relations"]))
    ids = [relation.relation_id for relation in relations]
    if len(set(ids)) != len(ids):
        raise TemplateError(
            f"{source}: repeated relation id(s) {sorted({i for i in ids if ids.count(i) > 1})}"
        )
    cues = []
    for position, raw in enumerate(data.get("subject_cues", [])):
        if not isinstance(raw, dict) or not isinstance(raw.get("cue"), str) or not raw["cue"].strip():
            raise TemplateError(
                f"{source}: subject_cues[{position}]: field 'cue': expected a non-empty string"
            )
        cues.append(SubjectCue(raw["cue"], _text_list(raw.get("kinds"), f"cue {raw['cue']!r}", "kinds")))
    known = {kind for cue in cues for kind in cue.kinds}
    for relation in relations:
        if relation.subject_kind not in known:
            raise TemplateError(
                f"relation {relation.relation_id}: field 'subject': no cue gives the kind {relation.subject_kind!r}"
            )
    return RelationTemplates(relations, tuple(cues), hashlib.sha256(text.encode()).hexdigest())


def load_templates(path: str | Path | None = None) -> RelationTemplates:
    """The project's templates (``editing/data/relation_templates.json``), or another file's."""
    if path is None:
        text = (resources.files("editing.data") / TEMPLATES_FILE).read_text()
        return parse_templates(text)
    return parse_templates(Path(path).read_text(), str(path))


def subject_kinds(records: Iterable[EditRecord], cues: Iterable[SubjectCue]) -> dict[str, frozenset[str]]:
    """Each subject of ``records`` with the kinds its prompts' cues give (subjects no cue fits are left
    out: no relation would be asked of them). Keys are in first-seen order, so the result is the same on
    every run."""
    cues = list(cues)
    kinds: dict[str, set[str]] = {}
    for record in records:
        subject = record.subject
        if not subject or subject not in record.prompt:
            continue
        template = record.prompt.replace(subject, SUBJECT, 1)
        for cue in cues:
            if cue.cue in template:
                kinds.setdefault(subject, set()).update(cue.kinds)
    return {subject: frozenset(found) for subject, found in kinds.items()}
