"""Edit records and the readers for the standard editing datasets.

One record type serves every source. Readers never drop a record silently: a malformed record raises
``RecordError`` naming the file, the record index and the field, unless the caller allows skips, in
which case each skipped record is kept with its reason in ``ReadResult.rejected``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

LOGGER = logging.getLogger(__name__)

DatasetFormat = Literal["zsre", "counterfact", "knowedit", "jsonl"]
# zsRE stores its locality inputs with a task prefix meant for seq2seq models; prompts drop it.
ZSRE_LOCALITY_PREFIX = "nq question: "


@dataclass(frozen=True)
class PromptAnswer:
    """A prompt with the answer it should (or did) produce; ``kind`` names the probe family."""

    prompt: str
    answer: str
    kind: str = ""


@dataclass(frozen=True)
class EditRecord:
    """One requested edit: make ``prompt`` complete with ``target_new``."""

    record_id: str
    prompt: str
    target_new: str
    target_true: str | None = None
    subject: str | None = None
    rephrase_prompts: tuple[str, ...] = ()
    locality: tuple[PromptAnswer, ...] = ()
    portability: tuple[PromptAnswer, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types (lists, not tuples): the project's JSONL format, read back by ``from_json``."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> EditRecord:
        return _parse_jsonl_record(raw, _FieldReader(Path("<memory>"), 0, raw))


class RecordError(ValueError):
    """A record is malformed. Carries where: file, record index and field."""

    def __init__(self, path: Path, index: int, field_name: str, reason: str):
        self.path, self.index, self.field_name, self.reason = path, index, field_name, reason
        super().__init__(f"{path}: record {index}: field {field_name!r}: {reason}")


@dataclass(frozen=True)
class RejectedRecord:
    index: int
    field_name: str
    reason: str


@dataclass
class ReadResult:
    records: list[EditRecord]
    rejected: list[RejectedRecord] = field(default_factory=list)
    source: str = ""


class _FieldReader:
    """Typed access to one raw record that raises ``RecordError`` with the field's name."""

    def __init__(self, path: Path, index: int, raw: Any):
        if not isinstance(raw, dict):
            raise RecordError(path, index, "<record>", f"expected a JSON object, got {type(raw).__name__}")
        self.path, self.index, self.raw = path, index, raw

    def fail(self, name: str, reason: str) -> RecordError:
        return RecordError(self.path, self.index, name, reason)

    def text(self, name: str, *, optional: bool = False) -> str | None:
        if name not in self.raw or self.raw[name] is None:
            if optional:
                return None
            raise self.fail(name, "missing")
        value = self.raw[name]
        if not isinstance(value, str):
            raise self.fail(name, f"expected a string, got {type(value).__name__}")
        if not value.strip():
            raise self.fail(name, "empty string")
        return value

    def first_text(self, name: str, *, optional: bool = False) -> str | None:
        """A string, or the first string of a non-empty list of strings."""
        value = self.raw.get(name)
        if isinstance(value, list):
            if not value:
                raise self.fail(name, "empty list")
            if not all(isinstance(item, str) and item.strip() for item in value):
                raise self.fail(name, "expected a list of non-empty strings")
            return value[0]
        return self.text(name, optional=optional)

    def mapping(self, name: str) -> dict[str, Any]:
        value = self.raw.get(name, {})
        if not isinstance(value, dict):
            raise self.fail(name, f"expected an object, got {type(value).__name__}")
        return value

    def probes(self, name: str) -> tuple[PromptAnswer, ...]:
        """KnowEdit-style ``{kind: [{"prompt", "ground_truth"}]}`` into prompt/answer pairs."""
        probes = []
        for kind, items in self.mapping(name).items():
            if not isinstance(items, list):
                raise self.fail(f"{name}.{kind}", "expected a list of probes")
            for position, item in enumerate(items):
                where = f"{name}.{kind}[{position}]"
                probe = _FieldReader(self.path, self.index, item) if isinstance(item, dict) else None
                if probe is None:
                    raise self.fail(where, "expected an object with prompt and ground_truth")
                try:
                    prompt = probe.text("prompt")
                    answer = probe.first_text("ground_truth")
                except RecordError as error:
                    raise self.fail(f"{where}.{error.field_name}", error.reason) from None
                probes.append(PromptAnswer(prompt, answer, kind))
        return tuple(probes)


def _parse_zsre(raw: dict[str, Any], fields_: _FieldReader) -> EditRecord:
    locality_prompt = fields_.text("loc")
    portability = fields_.mapping("portability")
    portability_probes: tuple[PromptAnswer, ...] = ()
    if portability:
        question, answer = portability.get("New Question"), portability.get("New Answer")
        if not (
            isinstance(question, str) and question.strip() and isinstance(answer, str) and answer.strip()
        ):
            raise fields_.fail("portability", "needs non-empty 'New Question' and 'New Answer'")
        portability_probes = (PromptAnswer(question, answer, "one_hop"),)
    return EditRecord(
        record_id=f"zsre-{fields_.index}",
        prompt=fields_.text("src"),
        target_new=fields_.text("alt"),
        target_true=fields_.first_text("answers", optional=True),
        subject=fields_.text("subject", optional=True),
        rephrase_prompts=(fields_.text("rephrase"),),
        locality=(
            PromptAnswer(locality_prompt.removeprefix(ZSRE_LOCALITY_PREFIX), fields_.text("loc_ans"), "nq"),
        ),
        portability=portability_probes,
    )


def _parse_counterfact(raw: dict[str, Any], fields_: _FieldReader) -> EditRecord:
    case_id = raw.get("case_id", fields_.index)
    return EditRecord(
        record_id=f"counterfact-{case_id}",
        prompt=fields_.text("prompt"),
        target_new=fields_.text("target_new"),
        target_true=fields_.text("ground_truth", optional=True),
        subject=fields_.text("subject", optional=True),
        rephrase_prompts=(fields_.text("rephrase_prompt"),),
        locality=(
            PromptAnswer(
                fields_.text("locality_prompt"), fields_.text("locality_ground_truth"), "neighborhood"
            ),
        ),
    )


def _parse_knowedit(raw: dict[str, Any], fields_: _FieldReader) -> EditRecord:
    return EditRecord(
        record_id=f"knowedit-{fields_.index}",
        prompt=fields_.text("prompt"),
        target_new=fields_.first_text("target_new"),
        target_true=fields_.first_text("ground_truth", optional=True),
        subject=fields_.text("subject", optional=True),
        rephrase_prompts=(fields_.text("rephrase_prompt"),),
        locality=fields_.probes("locality"),
        portability=fields_.probes("portability"),
    )


def _parse_pairs(fields_: _FieldReader, name: str) -> tuple[PromptAnswer, ...]:
    value = fields_.raw.get(name, [])
    if not isinstance(value, list):
        raise fields_.fail(name, "expected a list of {prompt, answer} objects")
    pairs = []
    for position, item in enumerate(value):
        try:
            pair = _FieldReader(fields_.path, fields_.index, item)
            pairs.append(PromptAnswer(pair.text("prompt"), pair.text("answer"), pair.raw.get("kind", "")))
        except RecordError as error:
            raise fields_.fail(f"{name}[{position}].{error.field_name}", error.reason) from None
    return tuple(pairs)


def _parse_jsonl_record(raw: dict[str, Any], fields_: _FieldReader) -> EditRecord:
    rephrases = fields_.raw.get("rephrase_prompts", [])
    if not isinstance(rephrases, list) or not all(isinstance(p, str) and p.strip() for p in rephrases):
        raise fields_.fail("rephrase_prompts", "expected a list of non-empty strings")
    return EditRecord(
        record_id=fields_.text("record_id"),
        prompt=fields_.text("prompt"),
        target_new=fields_.text("target_new"),
        target_true=fields_.text("target_true", optional=True),
        subject=fields_.text("subject", optional=True),
        rephrase_prompts=tuple(rephrases),
        locality=_parse_pairs(fields_, "locality"),
        portability=_parse_pairs(fields_, "portability"),
    )


_PARSERS: dict[str, Callable[[dict[str, Any], _FieldReader], EditRecord]] = {
    "zsre": _parse_zsre,
    "counterfact": _parse_counterfact,
    "knowedit": _parse_knowedit,
    "jsonl": _parse_jsonl_record,
}
# Fields that identify a format when it is not given.
_SIGNATURES: dict[str, set[str]] = {
    "zsre": {"src", "alt", "loc", "loc_ans"},
    "counterfact": {"prompt", "target_new", "locality_prompt", "locality_ground_truth"},
    "knowedit": {"prompt", "target_new", "rephrase_prompt", "locality"},
    "jsonl": {"record_id", "prompt", "target_new"},
}


def _load_raw(path: Path) -> list[Any]:
    if path.suffix == ".jsonl":
        raw = []
        for number, line in enumerate(path.read_text().splitlines()):
            if not line.strip():
                continue
            try:
                raw.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise RecordError(path, number, "<line>", f"invalid JSON: {error.msg}") from None
        return raw
    data = json.loads(path.read_text())
    if not isinstance(data, list):
        raise RecordError(path, 0, "<file>", "expected a JSON array of records")
    return data


def detect_format(path: Path, raw: list[Any]) -> str:
    if path.suffix == ".jsonl":
        return "jsonl"
    first = raw[0] if raw and isinstance(raw[0], dict) else {}
    for name, signature in _SIGNATURES.items():
        if signature <= set(first):
            return name
    raise RecordError(path, 0, "<format>", f"cannot tell the format from fields {sorted(first)}")


def read_records(
    path: str | Path,
    dataset_format: DatasetFormat | None = None,
    *,
    limit: int | None = None,
    offset: int = 0,
    allow_skips: bool = False,
) -> ReadResult:
    """Read edit records from ``path``; the format is detected from the fields when not given."""
    path = Path(path)
    raw = _load_raw(path)
    dataset_format = dataset_format or detect_format(path, raw)  # type: ignore[assignment]
    if dataset_format not in _PARSERS:
        raise ValueError(f"unknown dataset format {dataset_format!r}; one of {sorted(_PARSERS)}")
    parse = _PARSERS[dataset_format]
    end = len(raw) if limit is None else min(len(raw), offset + limit)
    result = ReadResult(records=[], source=f"{dataset_format}:{path}")
    for index in range(offset, end):
        try:
            result.records.append(parse(raw[index], _FieldReader(path, index, raw[index])))
        except RecordError as error:
            if not allow_skips:
                raise
            result.rejected.append(RejectedRecord(error.index, error.field_name, error.reason))
    if result.rejected:
        LOGGER.warning("%s: skipped %d malformed record(s)", path, len(result.rejected))
    return result


def write_jsonl(records: Iterable[EditRecord], path: str | Path) -> Path:
    """Write records in the project's own JSONL format (readable by ``read_records``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        for record in records:
            handle.write(json.dumps(record.to_json(), ensure_ascii=False) + "\n")
    return path


def read_texts(path: str | Path, *, limit: int | None = None) -> list[str]:
    """General-text sentences for perplexity (ME-PPL: a JSON array of {"Corpus", "Text"})."""
    path = Path(path)
    data = json.loads(path.read_text())
    texts = []
    for index, item in enumerate(data[:limit] if limit else data):
        text = _FieldReader(path, index, item).text("Text")
        texts.append(text)
    return texts
