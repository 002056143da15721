"""Flagged predictions: the records users file when the model answers wrongly, and the flag log.

The log is a set of immutable JSONL objects under ``flags/YYYY-MM-DD/``; every append writes a new
object with a unique name, so concurrent writers never clobber each other and a crash never loses a
flag already written. Reading parses each line structurally: well-formed lines become ``Flag``s and
every other line is reported as a ``MalformedFlag`` with its reason, never dropped. Content rules
(empty correction, length limits, model name) belong to the Great Expectations suite in
``expectations/``; duplicate and conflicting flags are screened here because they need grouping.
"""

from __future__ import annotations

import json
import logging
import unicodedata
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from tasks.storage import Store

LOGGER = logging.getLogger(__name__)

FLAGS_PREFIX = "flags/"
# Fixed namespace so a line written without a flag_id gets the same id on every read.
_MISSING_ID_NAMESPACE = uuid.UUID("6f1c2a52-3d0e-4a61-9a55-6a3c1a0f5e11")
_REQUIRED_TEXT = ("model_name", "model_version", "prompt", "prediction", "correction", "reason", "reporter")


class FlagFieldError(ValueError):
    """A flag's JSON is structurally wrong; names the field."""

    def __init__(self, field_name: str, reason: str):
        self.field_name, self.reason = field_name, reason
        super().__init__(f"field {field_name!r}: {reason}")


@dataclass(frozen=True)
class Flag:
    """One flagged prediction: ``prompt`` got ``prediction`` from the model, ``correction`` is right."""

    flag_id: str
    model_name: str
    model_version: str
    prompt: str
    prediction: str
    correction: str
    reason: str
    reporter: str
    flagged_at: datetime  # timezone-aware, UTC
    paraphrases: tuple[str, ...] = ()
    subject: str | None = None

    @classmethod
    def create(cls, **values: Any) -> Flag:
        """A new flag; ``flag_id`` (uuid4 hex) and ``flagged_at`` (now) are filled in when absent. Its text
        is checked at intake (``check_flag_text``), so a bad flag is refused before it is stored."""
        values.setdefault("flag_id", uuid.uuid4().hex)
        values.setdefault("flagged_at", datetime.now(UTC))
        flag = cls.from_json(values)
        check_flag_text(flag)
        return flag

    def to_json(self) -> dict[str, Any]:
        return {
            "flag_id": self.flag_id,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "prompt": self.prompt,
            "prediction": self.prediction,
            "correction": self.correction,
            "paraphrases": list(self.paraphrases),
            "subject": self.subject,
            "reason": self.reason,
            "reporter": self.reporter,
            "flagged_at": self.flagged_at.isoformat().replace("+00:00", "Z"),
        }

    @classmethod
    def from_json(cls, raw: Any, *, default_flag_id: str | None = None) -> Flag:
        """Parse one flag; raises ``FlagFieldError`` naming the field. Unknown fields are errors too,
        so a misspelt optional field is reported rather than silently ignored."""
        if not isinstance(raw, dict):
            raise FlagFieldError("<flag>", f"expected a JSON object, got {type(raw).__name__}")
        unknown = sorted(set(raw) - {f.name for f in fields(cls)})
        if unknown:
            raise FlagFieldError(unknown[0], "unknown field")
        flag_id = raw.get("flag_id")
        if flag_id is None:
            flag_id = default_flag_id or uuid.uuid4().hex
        if not isinstance(flag_id, str) or not flag_id.strip():
            raise FlagFieldError("flag_id", f"expected a non-empty string, got {flag_id!r}")
        version = raw.get("model_version")
        if isinstance(version, int) and not isinstance(version, bool):  # registries number versions
            raw = raw | {"model_version": str(version)}
        text = {name: _required_text(raw, name) for name in _REQUIRED_TEXT}
        return cls(
            flag_id=flag_id,
            flagged_at=_timestamp(raw.get("flagged_at")),
            paraphrases=_paraphrases(raw.get("paraphrases")),
            subject=_optional_text(raw, "subject"),
            **text,
        )


# Intake limits, in characters. Prompt and correction follow the incoming-flags suite's FlagLimits (which
# judges them again at extract); the other fields only need a bound so that a flag stays a small record.
MAX_TEXT_CHARS = {"prompt": 500, "correction": 200, "paraphrases": 500}
MAX_OTHER_CHARS = 1_000
MAX_PARAPHRASES = 20
# Line breaks (LF, and NEL U+0085 from pasted text) and tabs are part of prompts ("Q: ...\nA:"); every
# other control character (NUL, escape sequences, carriage returns, DEL, the rest of C1) is refused: flag
# text is data that reaches terminals, logs and HTML.
_ALLOWED_CONTROLS = {"\n", "\t", "\x85"}


def _text_problem(text: str, limit: int) -> str | None:
    if len(text) > limit:
        return f"longer than {limit} characters ({len(text)})"
    for position, character in enumerate(text):
        if unicodedata.category(character) == "Cc" and character not in _ALLOWED_CONTROLS:
            return f"control character U+{ord(character):04X} at position {position}"
    return None


def check_flag_text(flag: Flag) -> None:
    """Refuse a flag whose text is too long or holds control characters; names the field. The text is
    never interpreted (no template, format string or shell sees it), only stored and compared."""
    texts = {name: getattr(flag, name) for name in _REQUIRED_TEXT} | {"subject": flag.subject or ""}
    if len(flag.paraphrases) > MAX_PARAPHRASES:
        raise FlagFieldError("paraphrases", f"more than {MAX_PARAPHRASES} ({len(flag.paraphrases)})")
    for index, paraphrase in enumerate(flag.paraphrases):
        texts[f"paraphrases[{index}]"] = paraphrase
    for name, text in texts.items():
        limit = MAX_TEXT_CHARS.get(name.split("[")[0], MAX_OTHER_CHARS)
        problem = _text_problem(text, limit)
        if problem is not None:
            raise FlagFieldError(name, problem)


def _required_text(raw: dict[str, Any], name: str) -> str:
    if name not in raw or raw[name] is None:
        raise FlagFieldError(name, "missing")
    if not isinstance(raw[name], str):
        raise FlagFieldError(name, f"expected a string, got {type(raw[name]).__name__}")
    return raw[name]


def _optional_text(raw: dict[str, Any], name: str) -> str | None:
    value = raw.get(name)
    if value is not None and not isinstance(value, str):
        raise FlagFieldError(name, f"expected a string or null, got {type(value).__name__}")
    return value


def _paraphrases(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
        raise FlagFieldError("paraphrases", "expected a list of strings")
    return tuple(value)


def _timestamp(value: Any) -> datetime:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise FlagFieldError("flagged_at", f"not an ISO 8601 timestamp: {value!r}") from None
    elif value is None:
        raise FlagFieldError("flagged_at", "missing")
    else:
        raise FlagFieldError("flagged_at", f"expected an ISO 8601 string, got {type(value).__name__}")
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise FlagFieldError(
            "flagged_at", f"{value!r} has no time zone; write UTC, e.g. 2025-01-31T12:00:00Z"
        )
    return moment.astimezone(UTC)


@dataclass(frozen=True)
class MalformedFlag:
    """A line of the flag log that is not a well-formed flag, kept with where it is and why."""

    source_key: str
    line_number: int  # 1-based, as editors show it
    raw_text: str
    reason: str


@dataclass(frozen=True)
class RepeatedFlag:
    """A line repeating an earlier flag exactly (e.g. a retried append); counted once, reported here."""

    source_key: str
    line_number: int
    flag_id: str
    first_source_key: str
    first_line_number: int


@dataclass
class FlagLog:
    flags: list[Flag] = field(default_factory=list)
    malformed: list[MalformedFlag] = field(default_factory=list)
    repeats: list[RepeatedFlag] = field(default_factory=list)
    source_keys: list[str] = field(default_factory=list)


def append_flags(store: Store, flags: Sequence[Flag], *, now: datetime | None = None) -> str:
    """Write ``flags`` as a new JSONL object and return its key. Never rewrites an existing object."""
    if not flags:
        raise ValueError("append_flags: no flags to append")
    seen: set[str] = set()
    for flag in flags:
        if flag.flag_id in seen:
            raise ValueError(f"append_flags: flag_id {flag.flag_id!r} appears twice in one append")
        seen.add(flag.flag_id)
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    # Timestamp first so keys sort by write time; the uuid keeps concurrent writers apart.
    key = f"{FLAGS_PREFIX}{moment:%Y-%m-%d}/{moment:%Y%m%dT%H%M%S%fZ}-{uuid.uuid4().hex}.jsonl"
    lines = [json.dumps(flag.to_json(), ensure_ascii=False, sort_keys=True) for flag in flags]
    store.write_text(key, "\n".join(lines) + "\n")
    LOGGER.info("appended %d flags to %s", len(flags), store.url(key))
    return key


def read_flag_log(store: Store) -> FlagLog:
    """Every flag in the log, in write order, with malformed lines and exact repeats reported."""
    keys = [key for key in store.list(FLAGS_PREFIX) if key.endswith(".jsonl")]
    log = FlagLog(source_keys=keys)
    first_seen: dict[str, tuple[Flag, str, int]] = {}
    for key, data in zip(keys, store.read_many(keys), strict=True):
        # Split on "\n" only: str.splitlines would also split at U+2028 inside a JSON string.
        for line_number, raw_line in enumerate(data.split(b"\n"), start=1):
            if not raw_line.strip():
                continue
            flag_or_reason = _parse_line(raw_line, key, line_number)
            line = raw_line.decode("utf-8", errors="replace")
            if isinstance(flag_or_reason, str):
                log.malformed.append(MalformedFlag(key, line_number, line, flag_or_reason))
            else:
                _add_flag(log, first_seen, flag_or_reason, key, line_number, line)
    if log.malformed:
        LOGGER.warning("flag log: %d malformed lines in %s", len(log.malformed), store.url(FLAGS_PREFIX))
    return log


def _parse_line(raw_line: bytes, key: str, line_number: int) -> Flag | str:
    """The flag on one line, or the reason it is not one."""
    # Stable fallback id: objects are immutable, so (key, line) names the same flag forever.
    fallback = uuid.uuid5(_MISSING_ID_NAMESPACE, f"{key}:{line_number}").hex
    try:
        return Flag.from_json(json.loads(raw_line.decode("utf-8")), default_flag_id=fallback)
    except UnicodeDecodeError as error:
        return f"not UTF-8: {error}"
    except json.JSONDecodeError as error:
        return f"invalid JSON: {error}"
    except FlagFieldError as error:
        return str(error)


def _add_flag(
    log: FlagLog,
    first_seen: dict[str, tuple[Flag, str, int]],
    flag: Flag,
    key: str,
    line_number: int,
    line: str,
) -> None:
    earlier = first_seen.get(flag.flag_id)
    if earlier is None:
        first_seen[flag.flag_id] = (flag, key, line_number)
        log.flags.append(flag)
    elif earlier[0] == flag:
        log.repeats.append(RepeatedFlag(key, line_number, flag.flag_id, earlier[1], earlier[2]))
    else:
        reason = f"flag_id {flag.flag_id!r} already used with different content at {earlier[1]}:{earlier[2]}"
        log.malformed.append(MalformedFlag(key, line_number, line, reason))


@dataclass(frozen=True)
class RejectedFlag:
    flag: Flag
    reason: str


def normalize(text: str) -> str:
    """Compare texts ignoring case, Unicode compatibility forms and runs of whitespace."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _by_prompt(flags: Iterable[Flag]) -> dict[str, list[Flag]]:
    groups: dict[str, list[Flag]] = {}
    for flag in flags:
        groups.setdefault(normalize(flag.prompt), []).append(flag)
    return groups


def deduplicate(flags: Sequence[Flag]) -> tuple[list[Flag], list[RejectedFlag]]:
    """Keep the earliest flag of each (prompt, correction); later ones are ``duplicate of <id>``."""
    earliest: dict[tuple[str, str], Flag] = {}
    for flag in sorted(flags, key=lambda item: (item.flagged_at, item.flag_id)):
        earliest.setdefault((normalize(flag.prompt), normalize(flag.correction)), flag)
    unique, duplicates = [], []
    for flag in flags:  # input order is kept in both outputs
        first = earliest[(normalize(flag.prompt), normalize(flag.correction))]
        if first is flag:
            unique.append(flag)
        else:
            duplicates.append(RejectedFlag(flag, f"duplicate of {first.flag_id}"))
    return unique, duplicates


def find_conflicts(flags: Sequence[Flag]) -> tuple[list[Flag], list[RejectedFlag]]:
    """Reject every flag whose prompt other flags correct differently; a person must choose."""
    conflicted: dict[str, str] = {}
    for group in _by_prompt(flags).values():
        if len({normalize(flag.correction) for flag in group}) < 2:
            continue
        for flag in group:
            others = ", ".join(
                f"{other.flag_id} says {other.correction!r}"
                for other in group
                if other is not flag and normalize(other.correction) != normalize(flag.correction)
            )
            conflicted[flag.flag_id] = (
                f"conflicting corrections for the same prompt: this flag says {flag.correction!r}, {others}"
            )
    kept = [flag for flag in flags if flag.flag_id not in conflicted]
    rejected = [RejectedFlag(flag, conflicted[flag.flag_id]) for flag in flags if flag.flag_id in conflicted]
    return kept, rejected


def screen(flags: Sequence[Flag]) -> tuple[list[Flag], list[RejectedFlag]]:
    """Conflicts first (so every flag of a disputed prompt says why), then duplicates."""
    kept, conflicts = find_conflicts(flags)
    unique, duplicates = deduplicate(kept)
    return unique, conflicts + duplicates
