"""Flag records, the flag log, and duplicate/conflict screening. ``FlagLogContract`` also runs on S3."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tasks.flags import (
    FLAGS_PREFIX,
    Flag,
    FlagFieldError,
    append_flags,
    deduplicate,
    find_conflicts,
    read_flag_log,
    screen,
)
from tasks.storage import LocalStore, Store

START = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def make_flag(
    flag_id: str, prompt: str = "Who wrote Harry Potter?", correction: str = "J. K. Rowling", **extra: Any
):
    """A well-formed flag; ``minutes`` after START orders flags in time."""
    minutes = extra.pop("minutes", 0)
    values = {
        "flag_id": flag_id,
        "model_name": "smollm2-135m-instruct",
        "model_version": "3",
        "prompt": prompt,
        "prediction": "Stephen King",
        "correction": correction,
        "reason": "wrong author",
        "reporter": "alice",
        "flagged_at": START + timedelta(minutes=minutes),
    }
    return Flag.create(**(values | extra))


def raw_flag(**overrides: Any) -> dict[str, Any]:
    return make_flag("raw").to_json() | overrides


class FlagLogContract:
    """Flag log behaviour every store must support; subclasses provide a ``store`` fixture."""

    def test_append_and_read_back(self, store: Store) -> None:
        first = [make_flag("a", paraphrases=("Harry Potter's author is",), subject="Harry Potter")]
        second = [make_flag("b", prompt="Capital of France?", correction="Paris"), make_flag("c", minutes=5)]
        key_one = append_flags(store, first)
        key_two = append_flags(store, second)
        assert key_one != key_two
        assert key_one.startswith(FLAGS_PREFIX) and key_one.endswith(".jsonl")
        log = read_flag_log(store)
        assert log.flags == first + second
        assert (log.malformed, log.repeats) == ([], [])
        assert sorted(log.source_keys) == sorted([key_one, key_two])

    def test_malformed_lines_are_reported_not_dropped(self, store: Store) -> None:
        good = json.dumps(raw_flag(flag_id="good"))
        lines = [
            good,
            "{not json",
            json.dumps({key: value for key, value in raw_flag(flag_id="m1").items() if key != "correction"}),
            json.dumps(raw_flag(flag_id="m2", paraphrases="not a list")),
            json.dumps(raw_flag(flag_id="m3", flagged_at="2025-03-01T12:00:00")),
            json.dumps(raw_flag(flag_id="m4", corection="typo")),
            json.dumps(raw_flag(flag_id="m5", prompt=42)),
            "",
            json.dumps(["a", "list"]),
        ]
        data = (
            "\n".join(lines) + "\n"
        ).encode() + b'{"prompt": "caf\xe9"}\n'  # last line: Latin-1, not UTF-8
        store.write_bytes("flags/2025-03-01/hand-written.jsonl", data)
        log = read_flag_log(store)
        assert [flag.flag_id for flag in log.flags] == ["good"]
        reported = {item.line_number: item.reason for item in log.malformed}
        assert sorted(reported) == [2, 3, 4, 5, 6, 7, 9, 10]
        assert "invalid JSON" in reported[2]
        assert "'correction'" in reported[3] and "missing" in reported[3]
        assert "'paraphrases'" in reported[4]
        assert "'flagged_at'" in reported[5] and "time zone" in reported[5]
        assert "'corection'" in reported[6] and "unknown field" in reported[6]
        assert "'prompt'" in reported[7] and "int" in reported[7]
        assert "JSON object" in reported[9]
        assert "not UTF-8" in reported[10]
        assert all(item.source_key == "flags/2025-03-01/hand-written.jsonl" for item in log.malformed)
        assert log.malformed[0].raw_text == "{not json"

    def test_text_with_unicode_line_separators_survives(self, store: Store) -> None:
        flag = make_flag("a", prompt="Who wrote\u2028Harry Potter?\x85", correction="Rowling\u2029")
        append_flags(store, [flag])
        assert read_flag_log(store).flags == [flag]

    def test_flag_without_id_gets_the_same_id_on_every_read(self, store: Store) -> None:
        line = json.dumps({key: value for key, value in raw_flag().items() if key != "flag_id"})
        store.write_text("flags/2025-03-01/no-id.jsonl", line + "\n")
        first, second = read_flag_log(store), read_flag_log(store)
        assert len(first.flags) == 1 and first.flags[0].flag_id == second.flags[0].flag_id

    def test_repeated_append_counts_once_and_is_reported(self, store: Store) -> None:
        flags = [make_flag("a"), make_flag("b", prompt="Capital of France?")]
        first_key = append_flags(store, flags)
        append_flags(store, flags)  # a retried task whose first attempt did succeed
        log = read_flag_log(store)
        assert [flag.flag_id for flag in log.flags] == ["a", "b"]
        assert [(item.flag_id, item.first_source_key) for item in log.repeats] == [
            ("a", first_key),
            ("b", first_key),
        ]

    def test_reused_id_with_other_content_is_malformed(self, store: Store) -> None:
        append_flags(store, [make_flag("a")])
        append_flags(store, [make_flag("a", correction="Joanne Rowling")])
        log = read_flag_log(store)
        assert [flag.correction for flag in log.flags] == ["J. K. Rowling"]
        assert len(log.malformed) == 1 and "already used with different content" in log.malformed[0].reason


class TestLocalFlagLog(FlagLogContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> LocalStore:
        return LocalStore(tmp_path / "store")

    def test_append_refuses_empty_and_repeated_ids(self, store: LocalStore) -> None:
        with pytest.raises(ValueError, match="no flags"):
            append_flags(store, [])
        with pytest.raises(ValueError, match="'a' appears twice"):
            append_flags(store, [make_flag("a"), make_flag("a")])
        assert store.list() == []

    def test_append_files_by_date(self, store: LocalStore) -> None:
        key = append_flags(store, [make_flag("a")], now=datetime(2025, 1, 31, 23, 59, tzinfo=UTC))
        assert key.startswith("flags/2025-01-31/20250131T235900")


def test_json_round_trip_and_timestamp_in_utc() -> None:
    flag = make_flag("a", paraphrases=["Harry Potter was written by"], subject="Harry Potter")
    assert Flag.from_json(json.loads(json.dumps(flag.to_json()))) == flag
    assert flag.to_json()["flagged_at"] == "2025-03-01T12:00:00Z"
    shifted = Flag.from_json(raw_flag(flagged_at="2025-03-01T14:00:00+02:00"))
    assert shifted.flagged_at == START and shifted.flagged_at.tzinfo == UTC


def test_create_fills_in_id_and_time() -> None:
    values = {key: value for key, value in raw_flag().items() if key not in ("flag_id", "flagged_at")}
    one, two = Flag.create(**values), Flag.create(**values)
    assert len(one.flag_id) == 32 and one.flag_id != two.flag_id
    assert (datetime.now(UTC) - one.flagged_at) < timedelta(minutes=1)


def test_numeric_model_version_is_read_as_text() -> None:
    assert Flag.from_json(raw_flag(model_version=12)).model_version == "12"
    with pytest.raises(FlagFieldError, match="model_version"):
        Flag.from_json(raw_flag(model_version=True))


def test_field_error_names_the_field() -> None:
    with pytest.raises(FlagFieldError) as caught:
        Flag.from_json(raw_flag(subject=["not", "text"]))
    assert caught.value.field_name == "subject"


def test_duplicates_keep_the_earliest() -> None:
    later = make_flag("later", minutes=10)
    earliest = make_flag(
        "earliest", prompt="  who WROTE   harry potter? ", correction="j. k. rowling", minutes=1
    )
    other = make_flag("other", prompt="Capital of France?", correction="Paris")
    unique, duplicates = deduplicate([later, earliest, other])
    assert unique == [earliest, other]
    assert [(item.flag.flag_id, item.reason) for item in duplicates] == [("later", "duplicate of earliest")]


def test_conflicts_reject_the_whole_group_naming_the_others() -> None:
    rowling = make_flag("rowling")
    king = make_flag("king", correction="Stephen King")
    galbraith = make_flag("galbraith", prompt="who wrote harry potter?", correction="Robert Galbraith")
    paris = make_flag("paris", prompt="Capital of France?", correction="Paris")
    kept, rejected = find_conflicts([rowling, paris, king, galbraith])
    assert kept == [paris]
    reasons = {item.flag.flag_id: item.reason for item in rejected}
    assert set(reasons) == {"rowling", "king", "galbraith"}
    assert "king says 'Stephen King'" in reasons["rowling"]
    assert "galbraith says 'Robert Galbraith'" in reasons["rowling"]
    assert "rowling says 'J. K. Rowling'" in reasons["king"]


def test_agreeing_flags_are_not_a_conflict() -> None:
    flags = [make_flag("a"), make_flag("b", correction="j. k.  ROWLING")]
    assert find_conflicts(flags) == (flags, [])


def test_screen_rejects_conflicts_then_duplicates() -> None:
    first, again = make_flag("first"), make_flag("again", minutes=3)
    disputed = [
        make_flag("x", prompt="Capital of France?", correction="Paris"),
        make_flag("y", prompt="Capital of France?", correction="Lyon"),
    ]
    accepted, rejected = screen([first, again, *disputed])
    assert accepted == [first]
    reasons = {item.flag.flag_id: item.reason for item in rejected}
    assert reasons["again"] == "duplicate of first"
    assert reasons["x"].startswith("conflicting corrections") and reasons["y"].startswith(
        "conflicting corrections"
    )
