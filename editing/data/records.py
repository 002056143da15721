"""Edit records and the readers for the standard editing datasets.

One record type (``EditRecord``, in ``edit_record``) serves every source. ``READERS`` names each
published format; ``read_records`` takes a name or detects the format from the fields, and refuses a
file whose fields fit no format or several. Every reader turns one published item into one or more
records (an MQuAKE case into one per edited fact). Readers never drop a record silently: a malformed
item raises ``RecordError`` naming the file, the item index and the field, unless the caller allows
skips, in which case each skipped item is kept with its reason in ``ReadResult.rejected``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from editing.data import readers_knowedit as knowedit
from editing.data.edit_record import (
    EditRecord,
    FieldReader,
    PromptAnswer,
    RecordError,
    Source,
    parse_project_record,
)
from editing.data.readers_mquake import parse_case as parse_mquake_case

__all__ = [
    "READERS",
    "DatasetFormat",
    "EditRecord",
    "PromptAnswer",
    "ReadResult",
    "RecordError",
    "RejectedRecord",
    "detect_format",
    "read_records",
    "read_texts",
    "write_jsonl",
]

LOGGER = logging.getLogger(__name__)

DatasetFormat = Literal[
    "zsre",
    "counterfact",
    "knowedit",
    "knowedit-zsre",
    "knowedit-wikidata-counterfact",
    "knowedit-wikidata-recent",
    "knowedit-wikibio",
    "knowedit-convsent",
    "knowedit-sanitation",
    "mquake",
    "jsonl",
]
# zsRE stores its locality inputs with a task prefix meant for seq2seq models; prompts drop it.
ZSRE_LOCALITY_PREFIX = "nq question: "


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


def _parse_zsre(fields: FieldReader, source: Source) -> list[EditRecord]:
    """zsRE in MEND's format (``src``, ``alt``, ``answers``, ``rephrase``, ``loc``, ``loc_ans``)."""
    locality_prompt = fields.text("loc")
    portability = fields.mapping("portability")
    portability_probes: tuple[PromptAnswer, ...] = ()
    if portability:
        question, answer = portability.get("New Question"), portability.get("New Answer")
        if not (
            isinstance(question, str) and question.strip() and isinstance(answer, str) and answer.strip()
        ):
            raise fields.fail("portability", "needs non-empty 'New Question' and 'New Answer'")
        portability_probes = (PromptAnswer(question, answer, "one_hop"),)
    answers = fields.optional_answers("answers")
    return [
        EditRecord(
            record_id=f"{source.format_name}-{fields.index}",
            prompt=fields.text("src"),
            target_new=fields.text("alt"),
            target_true=answers[0] if answers else None,
            subject=fields.optional_text("subject"),
            rephrase_prompts=(fields.text("rephrase"),),
            locality=(
                PromptAnswer(
                    locality_prompt.removeprefix(ZSRE_LOCALITY_PREFIX), fields.text("loc_ans"), "nq"
                ),
            ),
            portability=portability_probes,
        )
    ]


def _parse_counterfact(fields: FieldReader, source: Source) -> list[EditRecord]:
    """CounterFact as EasyEdit splits it (``prompt``, ``target_new``, ``locality_prompt``, ...)."""
    case_id = fields.raw.get("case_id", fields.index)
    return [
        EditRecord(
            record_id=f"{source.format_name}-{case_id}",
            prompt=fields.text("prompt"),
            target_new=fields.text("target_new"),
            target_true=fields.optional_text("ground_truth"),
            subject=fields.optional_text("subject"),
            rephrase_prompts=(fields.text("rephrase_prompt"),),
            locality=(
                PromptAnswer(
                    fields.text("locality_prompt"), fields.text("locality_ground_truth"), "neighborhood"
                ),
            ),
        )
    ]


def _parse_project(fields: FieldReader, source: Source) -> list[EditRecord]:
    return [parse_project_record(fields)]


def _json_array(path: Path, data: Any) -> tuple[list[Any], dict[str, Any]]:
    if not isinstance(data, list):
        raise RecordError(path, 0, "<file>", "expected a JSON array of records")
    return data, {}


@dataclass(frozen=True)
class Reader:
    """One published format.

    ``signature``: top-level fields of a record that identify the format (empty: never detected, only
    named, for layouts that several formats share). ``file_signatures``: the same for files that are one
    JSON object rather than an array. ``unpack`` turns the file's JSON into items and file-level lists.
    """

    parse: Callable[[FieldReader, Source], list[EditRecord]]
    signature: frozenset[str] = frozenset()
    file_signatures: tuple[frozenset[str], ...] = ()
    unpack: Callable[[Path, Any], tuple[list[Any], dict[str, Any]]] = _json_array


READERS: dict[str, Reader] = {
    "zsre": Reader(_parse_zsre, frozenset({"src", "alt", "loc", "loc_ans"})),
    "counterfact": Reader(
        _parse_counterfact, frozenset({"prompt", "target_new", "locality_prompt", "locality_ground_truth"})
    ),
    # The KnowEdit ZsRE layout under its first name (record ids "knowedit-N"), detected as before.
    "knowedit": Reader(
        knowedit.parse_zsre, frozenset({"prompt", "target_new", "rephrase_prompt", "locality"})
    ),
    "knowedit-zsre": Reader(knowedit.parse_zsre),
    "knowedit-wikidata-counterfact": Reader(knowedit.parse_wikidata_counterfact),
    "knowedit-wikidata-recent": Reader(knowedit.parse_wikidata_recent),
    "knowedit-wikibio": Reader(knowedit.parse_wikibio, frozenset({"text", "labels", "concept"})),
    "knowedit-convsent": Reader(knowedit.parse_convsent, frozenset({"ent", "pos", "neg"})),
    "knowedit-sanitation": Reader(
        knowedit.parse_sanitation,
        file_signatures=tuple(frozenset(split) for split in knowedit.SANITATION_SPLITS),
        unpack=knowedit.unpack_sanitation,
    ),
    "mquake": Reader(parse_mquake_case, frozenset({"requested_rewrite", "questions", "new_answer"})),
    "jsonl": Reader(_parse_project),
}
# Layouts that fit several formats whose fields cannot tell them apart: detection refuses them.
_SHARED_LAYOUTS = (
    (
        frozenset({"prompt", "target_new", "locality"}),
        ("knowedit-zsre", "knowedit-wikidata-counterfact", "knowedit-wikidata-recent"),
    ),
)


def _load_raw(path: Path) -> Any:
    """The file's JSON: a list of records for JSONL, whatever the JSON holds otherwise."""
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
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise RecordError(path, 0, "<file>", f"invalid JSON: {error.msg} (line {error.lineno})") from None


def _format_error(path: Path, reason: str) -> RecordError:
    return RecordError(path, 0, "<format>", f"{reason}; pass the format by name, one of {sorted(READERS)}")


def detect_format(path: Path, raw: Any) -> str:
    """The one format whose identifying fields the file has; refuses files that fit none or several."""
    if path.suffix == ".jsonl":
        return "jsonl"
    if isinstance(raw, dict):
        fields = set(raw)
        matches = [
            name for name, reader in READERS.items() if any(s <= fields for s in reader.file_signatures)
        ]
    else:
        if not raw:
            raise _format_error(path, "no records to tell the format from")
        fields = set(raw[0]) if isinstance(raw[0], dict) else set()
        matches = [
            name for name, reader in READERS.items() if reader.signature and reader.signature <= fields
        ]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise _format_error(path, f"fields {sorted(fields)} fit several formats ({', '.join(matches)})")
    for layout, names in _SHARED_LAYOUTS:
        if layout <= fields:
            raise _format_error(
                path,
                f"fields {sorted(fields)} are the layout of {', '.join(names)}, which they cannot tell apart",
            )
    raise _format_error(path, f"cannot tell the format from fields {sorted(fields)}")


def read_records(
    path: str | Path,
    dataset_format: DatasetFormat | None = None,
    *,
    limit: int | None = None,
    offset: int = 0,
    allow_skips: bool = False,
) -> ReadResult:
    """Read edit records from ``path``; the format is detected from the fields when not given.

    ``limit`` and ``offset`` count published items (records of JSONL): an MQuAKE case gives one record
    per edited fact, and a case is never split.
    """
    path = Path(path)
    data = _load_raw(path)
    name = dataset_format or detect_format(path, data)
    if name not in READERS:
        raise ValueError(f"unknown dataset format {name!r}; one of {sorted(READERS)}")
    reader = READERS[name]
    items, shared = reader.unpack(path, data)
    source = Source(path, name, items, shared)
    end = len(items) if limit is None else min(len(items), offset + limit)
    result = ReadResult(records=[], source=f"{name}:{path}")
    for index in range(offset, end):
        try:
            result.records.extend(reader.parse(FieldReader(path, index, items[index]), source))
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
        text = FieldReader(path, index, item).text("Text")
        texts.append(text)
    return texts
