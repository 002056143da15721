"""The edit record, answers with their aliases, and typed access to raw records that fails by field name.

Published datasets give a ground truth in three shapes: a string, a list of strings (the answer and
its aliases), or a list of alias lists (KnowEdit's WikiData subsets: one inner list per acceptable
answer, each with its Wikidata aliases). ``FieldReader.answers`` reads all three into one flat tuple,
the first string being the answer and the rest its aliases; evaluation counts any of them as correct.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Locality probe kinds that ask about the edited subject itself (its other relations), by source: KnowEdit's
# relation specificity, the training-data generator's and the fix run's same-subject probes. Every other
# kind is a neighbour (another subject) or unrelated text.
SAME_SUBJECT_KINDS = frozenset({"Relation_Specificity", "same_subject"})


@dataclass(frozen=True)
class PromptAnswer:
    """A prompt with the answer it should (or did) produce; ``kind`` names the probe family.

    ``answer_aliases`` are other strings that count as the same answer ("USA" for "United States").
    """

    prompt: str
    answer: str
    kind: str = ""
    answer_aliases: tuple[str, ...] = ()

    @property
    def answers(self) -> tuple[str, ...]:
        """The answer first, then its aliases."""
        return (self.answer, *self.answer_aliases)


@dataclass(frozen=True)
class EditRecord:
    """One requested edit: make ``prompt`` complete with ``target_new`` (or one of ``target_aliases``).

    Records sharing an ``edit_group`` are one published case (an MQuAKE question needs all its edited
    facts at once), so single-edit evaluation applies them together.
    """

    record_id: str
    prompt: str
    target_new: str
    target_true: str | None = None
    subject: str | None = None
    rephrase_prompts: tuple[str, ...] = ()
    locality: tuple[PromptAnswer, ...] = ()
    portability: tuple[PromptAnswer, ...] = ()
    target_aliases: tuple[str, ...] = ()
    edit_group: str | None = None

    @property
    def targets(self) -> tuple[str, ...]:
        """``target_new`` first, then its aliases."""
        return (self.target_new, *self.target_aliases)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types: the project's JSONL format, read back by ``from_json``.

        Aliases and the group are written only when set, so files of records without them stay
        byte-identical to those written before aliases existed.
        """
        raw = json.loads(json.dumps(asdict(self)))
        if not self.target_aliases:
            del raw["target_aliases"]
        if self.edit_group is None:
            del raw["edit_group"]
        for probe in (*raw["locality"], *raw["portability"]):
            if not probe["answer_aliases"]:
                del probe["answer_aliases"]
        return raw

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> EditRecord:
        return parse_project_record(FieldReader(Path("<memory>"), 0, raw))


class RecordError(ValueError):
    """A record is malformed. Carries where: file, record index and field."""

    def __init__(self, path: Path, index: int, field_name: str, reason: str):
        self.path, self.index, self.field_name, self.reason = path, index, field_name, reason
        super().__init__(f"{path}: record {index}: field {field_name!r}: {reason}")


@dataclass(frozen=True)
class Source:
    """What a reader sees besides the item it parses.

    ``format_name`` starts every record id; ``items`` are all the file's items (ConvSent's locality probe
    is the next topic); ``shared`` holds file-level lists (Sanitation's retained questions).
    """

    path: Path
    format_name: str
    items: Sequence[Any]
    shared: Mapping[str, Any] = field(default_factory=dict)


def dedupe(values: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """In order, each string once (an alias equal to the answer adds nothing but cost)."""
    return tuple(dict.fromkeys(values))


class FieldReader:
    """Typed access to one raw record (or an object inside it) that raises ``RecordError`` by field name.

    ``prefix`` is the path of a nested object inside the record (``requested_rewrite[1].``), so an error
    names the full field path.
    """

    def __init__(self, path: Path, index: int, raw: Any, prefix: str = ""):
        if not isinstance(raw, dict):
            where = prefix.removesuffix(".") or "<record>"
            raise RecordError(path, index, where, f"expected a JSON object, got {type(raw).__name__}")
        self.path, self.index, self.raw, self.prefix = path, index, raw, prefix

    def fail(self, name: str, reason: str) -> RecordError:
        return RecordError(self.path, self.index, self.prefix + name, reason)

    def has(self, name: str) -> bool:
        return self.raw.get(name) is not None

    def text(self, name: str) -> str:
        """A required non-empty string."""
        if not self.has(name):
            raise self.fail(name, "missing")
        value = self.raw[name]
        if not isinstance(value, str):
            raise self.fail(name, f"expected a string, got {type(value).__name__}")
        if not value.strip():
            raise self.fail(name, "empty string")
        return value

    def optional_text(self, name: str) -> str | None:
        return self.text(name) if self.has(name) else None

    def texts(self, name: str, *, allow_empty: bool = False) -> tuple[str, ...]:
        """A string or a list of non-empty strings; () when absent."""
        if not self.has(name):
            return ()
        value = self.raw[name]
        if not isinstance(value, list):
            return (self.text(name),)
        if not value and not allow_empty:
            raise self.fail(name, "empty list")
        if not all(isinstance(item, str) and item.strip() for item in value):
            raise self.fail(name, "expected a list of non-empty strings")
        return dedupe(value)

    def answers(self, name: str) -> tuple[str, ...]:
        """A required ground truth in any published shape, flattened: the answer, then its aliases."""
        if not self.has(name):
            raise self.fail(name, "missing")
        value = self.raw[name]
        if not isinstance(value, list):
            return (self.text(name),)
        if not value:
            raise self.fail(name, "empty list")
        flat: list[str] = []
        for item in value:
            # A list of alias lists (KnowEdit WikiData subsets); an empty inner list is an error too.
            group = item if isinstance(item, list) and item else [item]
            if not all(isinstance(alias, str) and alias.strip() for alias in group):
                raise self.fail(name, "expected a list of non-empty strings (or of lists of them)")
            flat.extend(group)
        return dedupe(flat)

    def optional_answers(self, name: str) -> tuple[str, ...]:
        """Like ``answers``; () when absent."""
        return self.answers(name) if self.has(name) else ()

    def child(self, name: str) -> FieldReader:
        """The object at ``name`` (required)."""
        if not self.has(name):
            raise self.fail(name, "missing")
        if not isinstance(self.raw[name], dict):
            raise self.fail(name, f"expected an object, got {type(self.raw[name]).__name__}")
        return FieldReader(self.path, self.index, self.raw[name], f"{self.prefix}{name}.")

    def mapping(self, name: str) -> dict[str, Any]:
        value = self.raw.get(name, {})
        if not isinstance(value, dict):
            raise self.fail(name, f"expected an object, got {type(value).__name__}")
        return value

    def items(self, name: str, *, optional: bool = False) -> list[FieldReader]:
        """The objects of the list at ``name``; required lists must not be empty."""
        if not self.has(name):
            if optional:
                return []
            raise self.fail(name, "missing")
        value = self.raw[name]
        if not isinstance(value, list):
            raise self.fail(name, f"expected a list, got {type(value).__name__}")
        if not value and not optional:
            raise self.fail(name, "empty list")
        return [
            FieldReader(self.path, self.index, item, f"{self.prefix}{name}[{position}].")
            for position, item in enumerate(value)
        ]

    def probe(self, kind: str) -> PromptAnswer:
        """This object as a KnowEdit ``{"prompt", "ground_truth"}`` probe."""
        answers = self.answers("ground_truth")
        return PromptAnswer(self.text("prompt"), answers[0], kind, answers[1:])

    def probes(self, name: str) -> tuple[PromptAnswer, ...]:
        """KnowEdit-style ``{kind: [{"prompt", "ground_truth"}]}`` into prompt/answer pairs."""
        probes = []
        for kind, values in self.mapping(name).items():
            if not isinstance(values, list):
                raise self.fail(f"{name}.{kind}", "expected a list of probes")
            for position, item in enumerate(values):
                if not isinstance(item, dict):
                    raise self.fail(
                        f"{name}.{kind}[{position}]", "expected an object with prompt and ground_truth"
                    )
                probes.append(
                    FieldReader(
                        self.path, self.index, item, f"{self.prefix}{name}.{kind}[{position}]."
                    ).probe(kind)
                )
        return tuple(probes)


def _parse_pairs(fields: FieldReader, name: str) -> tuple[PromptAnswer, ...]:
    pairs = []
    for pair in fields.items(name, optional=True):
        aliases = pair.texts("answer_aliases", allow_empty=True)
        pairs.append(
            PromptAnswer(pair.text("prompt"), pair.text("answer"), pair.raw.get("kind", ""), aliases)
        )
    return tuple(pairs)


def parse_project_record(fields: FieldReader) -> EditRecord:
    """The project's own JSONL record (``EditRecord.to_json``)."""
    rephrases = fields.raw.get("rephrase_prompts", [])
    if not isinstance(rephrases, list) or not all(isinstance(p, str) and p.strip() for p in rephrases):
        raise fields.fail("rephrase_prompts", "expected a list of non-empty strings")
    return EditRecord(
        record_id=fields.text("record_id"),
        prompt=fields.text("prompt"),
        target_new=fields.text("target_new"),
        target_true=fields.optional_text("target_true"),
        subject=fields.optional_text("subject"),
        rephrase_prompts=tuple(rephrases),
        locality=_parse_pairs(fields, "locality"),
        portability=_parse_pairs(fields, "portability"),
        target_aliases=fields.texts("target_aliases", allow_empty=True),
        edit_group=fields.optional_text("edit_group"),
    )
