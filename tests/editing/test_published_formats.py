"""Every KnowEdit subset and MQuAKE read in its published field layout, with aliases, groups and errors.

Only KnowEdit ZsRE is on this machine, so the other layouts are built in temporary files from
``published_fixtures`` (each written in the field layout of the public source named beside it).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from editing.data.edit_record import EditRecord, PromptAnswer
from editing.data.readers_knowedit import SANITATION_TEMPLATE
from editing.data.records import READERS, RecordError, detect_format, read_records, write_jsonl
from tests.editing.published_fixtures import (
    CONVSENT,
    MQUAKE,
    SANITATION_ITEMS,
    SANITATION_TEST,
    SANITATION_TRAIN,
    WIKIBIO,
    WIKIDATA_COUNTERFACT,
    WIKIDATA_RECENT,
)
from tests.editing.test_data import KNOWEDIT, _broken
from tests.paths import DATA_DIR


def write(tmp_path: Path, data, name: str = "data.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data, ensure_ascii=False))
    return path


def test_wikidata_recent_alias_lists(tmp_path):
    (record,) = read_records(write(tmp_path, [WIKIDATA_RECENT]), "knowedit-wikidata-recent").records
    assert record.record_id == "knowedit-wikidata-recent-0"
    assert (record.target_new, record.target_true, record.rephrase_prompts) == ("Berlin", None, ())
    # Each inner list is one acceptable answer with its aliases: all of them count.
    assert record.portability[0] == PromptAnswer(
        "Is Leo Arons still alive?",
        "no",
        "Logical_Generalization",
        ("incorrect", "false", "is not alive", "is dead"),
    )
    assert record.portability[1].answers == ("Kai Wegner", "Kai Peter Wegner")
    assert record.portability[2].answer_aliases == ("Berlin, Germany", "Berlin (Germany)", "DE-BE")
    assert [probe.kind for probe in record.locality] == ["Relation_Specificity"] * 2
    assert record.locality[0] == PromptAnswer(
        "The name of the father of Leo Arons is", "Albert Arons", "Relation_Specificity"
    )


def test_rephrase_is_read_under_either_name(tmp_path):
    # easyeditor/dataset/knowedit.py reads "rephrase" when a file has it instead of "rephrase_prompt".
    recent = dict(WIKIDATA_RECENT, rephrase="Leo Arons' place of death is")
    (record,) = read_records(write(tmp_path, [recent]), "knowedit-wikidata-recent").records
    assert record.rephrase_prompts == ("Leo Arons' place of death is",)
    zsre = {key: value for key, value in KNOWEDIT.items() if key != "rephrase_prompt"}
    zsre["rephrase"] = [KNOWEDIT["rephrase_prompt"], "Epaspidoceras is in which family?"]
    (record,) = read_records(write(tmp_path, [zsre], "zsre.json"), "knowedit-zsre").records
    assert record.rephrase_prompts == (KNOWEDIT["rephrase_prompt"], "Epaspidoceras is in which family?")


def test_wikidata_counterfact_string_ground_truths(tmp_path):
    (record,) = read_records(write(tmp_path, [WIKIDATA_COUNTERFACT]), "knowedit-wikidata-counterfact").records
    assert (record.target_new, record.target_true, record.target_aliases) == (
        "Archbishop of León, Mexico",
        "mayor of Vienna",
        (),
    )
    assert [(probe.kind, probe.answer) for probe in record.locality] == [
        ("Relation_Specificity", "male"),
        ("Forgetfulness", "mayor of Vienna"),
    ]
    assert record.portability == (
        PromptAnswer(
            "The name of the position held by Frederic of Pieschen is",
            "Archbishop of León, Mexico",
            "Subject_Aliasing",
        ),
    )


def test_wikibio(tmp_path):
    (record,) = read_records(write(tmp_path, [WIKIBIO])).records  # detected: its fields are its own
    assert record.record_id == "knowedit-wikibio-0"
    assert (record.prompt, record.target_new, record.subject) == (
        WIKIBIO["text"],
        WIKIBIO["labels"],
        "john russell reynolds",
    )
    assert record.rephrase_prompts == () and record.portability == ()  # WikiBio has neither
    assert [probe.answer for probe in record.locality] == ["medicine", "medicine"]


def test_convsent_alternates_sentiment_and_asks_the_next_topic(tmp_path):
    records = read_records(write(tmp_path, CONVSENT)).records
    first, second, third = records
    assert first.prompt == "What do you think of jazz?"
    assert first.targets == ("I love jazz.", "Jazz is great.")  # positive: any positive sentence counts
    assert second.targets == ("Spinach is awful.", "I hate spinach.")  # negative
    assert first.rephrase_prompts == ("What do you feel about jazz?", "How do you view jazz?")
    assert first.locality == (
        PromptAnswer(
            "What do you think of spinach?",
            "Spinach is tasty.",
            "other_topic",
            ("Spinach is awful.", "I hate spinach."),
        ),
    )
    assert third.locality[0].prompt == "What do you think of jazz?"  # the last topic's neighbour is the first


@pytest.mark.parametrize(
    ("data", "retained_field"),
    [(SANITATION_TEST, "locality"), (SANITATION_TRAIN, "K_R")],
    ids=["test", "train"],
)
def test_sanitation_shares_retained_questions_once(tmp_path, data, retained_field):
    records = read_records(write(tmp_path, data)).records
    assert [record.prompt for record in records] == [
        SANITATION_TEMPLATE.format(item["question"]) for item in SANITATION_ITEMS
    ]
    assert all(r.target_new == "I don't know." and r.target_true == "Birds" for r in records)
    # Five retained questions over two records: 0, 2, 4 and 1, 3; each scored exactly once.
    assert [[probe.answer for probe in record.locality] for record in records] == [
        ["1", "3", "5"],
        ["2", "4"],
    ]
    assert records[0].locality[0].prompt == "Question:What is 0 plus one?\nAnswer:"


def test_mquake_case_is_one_group_of_rewrites(tmp_path):
    first, second = read_records(write(tmp_path, [MQUAKE])).records
    assert (first.record_id, second.record_id) == ("mquake-2500-0", "mquake-2500-1")
    assert first.edit_group == second.edit_group == "mquake-2500"
    assert (first.prompt, first.target_new, first.target_true) == (
        "Vince McMahon is a citizen of",
        "Libya",
        "United States of America",
    )
    assert second.prompt == "The capital of Libya is" and second.rephrase_prompts == (
        "What is the capital of Libya?",
    )
    # The whole case's checks sit on its first record, once.
    assert [probe.prompt for probe in first.portability] == MQUAKE["questions"]
    assert {probe.answers for probe in first.portability} == {("Franklin", "Franklin, Kentucky")}
    # Only the hops the edits leave alone are locality: employer and CEO, not citizenship or capital.
    assert first.locality == (
        PromptAnswer("Triple H is employed by", "WWE", "unchanged_hop", ("World Wrestling Federation",)),
        PromptAnswer("The chief executive officer of WWE is", "Vince McMahon", "unchanged_hop"),
    )
    assert second.portability == () and second.locality == ()


def test_limit_counts_published_cases(tmp_path):
    cases = [dict(MQUAKE, case_id=n) for n in range(3)]
    records = read_records(write(tmp_path, cases), limit=1, offset=1).records
    assert [r.record_id for r in records] == ["mquake-1-0", "mquake-1-1"]  # a case is never split


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ([WIKIBIO], "knowedit-wikibio"),
        (CONVSENT, "knowedit-convsent"),
        (SANITATION_TEST, "knowedit-sanitation"),
        (SANITATION_TRAIN, "knowedit-sanitation"),
        ([MQUAKE], "mquake"),
        ([KNOWEDIT], "knowedit"),
    ],
    ids=["wikibio", "convsent", "sanitation-test", "sanitation-train", "mquake", "knowedit-zsre"],
)
def test_detection(tmp_path, data, expected):
    assert detect_format(tmp_path / "x.json", data) == expected


@pytest.mark.parametrize("raw", [WIKIDATA_RECENT, WIKIDATA_COUNTERFACT], ids=["recent", "counterfact"])
def test_shared_layout_is_refused_without_a_name(tmp_path, raw):
    path = write(tmp_path, [raw])
    with pytest.raises(RecordError) as caught:
        read_records(path)
    message = str(caught.value)
    assert "cannot tell apart" in message and "knowedit-wikidata-counterfact" in message
    assert "knowedit-wikidata-recent" in message and str(path) in message


def test_fields_of_two_formats_are_refused(tmp_path):
    both = {**CONVSENT[0], **WIKIBIO}
    with pytest.raises(RecordError, match=r"fit several formats \(knowedit-wikibio, knowedit-convsent\)"):
        read_records(write(tmp_path, [both]))


def test_unknown_format_name(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset format 'knowedit-wiki'"):
        read_records(write(tmp_path, [WIKIBIO]), "knowedit-wiki")  # type: ignore[arg-type]


MALFORMED = [
    (
        "recent-empty-target",
        "knowedit-wikidata-recent",
        [WIKIDATA_RECENT],
        [0, "target_new"],
        "",
        0,
        "target_new",
        "empty string",
    ),
    (
        "recent-empty-alias-list",
        "knowedit-wikidata-recent",
        [WIKIDATA_RECENT],
        [0, "locality", "Relation_Specificity", 1, "ground_truth"],
        [[]],
        0,
        "locality.Relation_Specificity[1].ground_truth",
        "lists of them",
    ),
    (
        "counterfact-no-ground-truth",
        "knowedit-wikidata-counterfact",
        [WIKIDATA_COUNTERFACT],
        [0, "ground_truth"],
        ...,
        0,
        "ground_truth",
        "missing",
    ),
    (
        "zsre-no-rephrase",
        "knowedit-zsre",
        [KNOWEDIT],
        [0, "rephrase_prompt"],
        ...,
        0,
        "rephrase_prompt",
        "no 'rephrase' either",
    ),
    ("wikibio-no-labels", "knowedit-wikibio", [WIKIBIO], [0, "labels"], ..., 0, "labels", "missing"),
    ("convsent-empty-neg", "knowedit-convsent", CONVSENT, [2, "neg"], [], 2, "neg", "empty list"),
    (
        "sanitation-retained-question",
        "knowedit-sanitation",
        SANITATION_TEST,
        ["locality", 3, "question"],
        ...,
        1,
        "locality[3].question",
        "missing",
    ),
    (
        "sanitation-layout",
        "knowedit-sanitation",
        SANITATION_TEST,
        ["locality"],
        ...,
        0,
        "<file>",
        "'K_F' and 'K_R'",
    ),
    (
        "mquake-target-str",
        "mquake",
        [MQUAKE],
        [0, "requested_rewrite", 1, "target_new", "str"],
        ...,
        0,
        "requested_rewrite[1].target_new.str",
        "missing",
    ),
    (
        "mquake-placeholder",
        "mquake",
        [MQUAKE],
        [0, "requested_rewrite", 0, "prompt"],
        "Vince is a citizen of",
        0,
        "requested_rewrite[0].prompt",
        "placeholder",
    ),
    ("mquake-new-answer", "mquake", [MQUAKE], [0, "new_answer"], ..., 0, "new_answer", "missing"),
    (
        "mquake-hop-cloze",
        "mquake",
        [MQUAKE],
        [0, "new_single_hops", 2, "cloze"],
        7,
        0,
        "new_single_hops[2].cloze",
        "expected a string",
    ),
]


@pytest.mark.parametrize(
    ("case", "name", "data", "path", "value", "index", "field", "reason"),
    MALFORMED,
    ids=[m[0] for m in MALFORMED],
)
def test_unreadable_record_names_file_index_and_field(
    tmp_path, case, name, data, path, value, index, field, reason
):
    file = write(tmp_path, _broken(data, path, value))
    with pytest.raises(RecordError) as caught:
        read_records(file, name)
    error = caught.value
    assert (error.path, error.index, error.field_name) == (file, index, field)
    assert reason in error.reason
    assert str(file) in str(error) and f"record {index}" in str(error)


def test_skips_keep_the_published_empty_targets(tmp_path):
    # WikiData_recent publishes some records with an empty target_new (EasyEdit's loader drops them):
    # a strict read refuses them, a read with skips keeps each one with its reason.
    empty = dict(WIKIDATA_RECENT, target_new="")
    result = read_records(
        write(tmp_path, [WIKIDATA_RECENT, empty]), "knowedit-wikidata-recent", allow_skips=True
    )
    assert len(result.records) == 1
    assert [(r.index, r.field_name) for r in result.rejected] == [(1, "target_new")]


ROUND_TRIPS = [
    ("knowedit-wikidata-recent", [WIKIDATA_RECENT]),
    ("knowedit-wikidata-counterfact", [WIKIDATA_COUNTERFACT]),
    ("knowedit-zsre", [KNOWEDIT]),
    ("knowedit-wikibio", [WIKIBIO]),
    ("knowedit-convsent", CONVSENT),
    ("knowedit-sanitation", SANITATION_TEST),
    ("mquake", [MQUAKE]),
]


@pytest.mark.parametrize(("name", "data"), ROUND_TRIPS, ids=[r[0] for r in ROUND_TRIPS])
def test_every_subset_round_trips_through_project_jsonl(tmp_path, name, data):
    records = read_records(write(tmp_path, data), name).records
    path = write_jsonl(records, tmp_path / f"{name}.jsonl")
    assert read_records(path).records == records  # aliases, kinds and groups included


def test_round_trip_keeps_aliases_and_groups():
    record = EditRecord(
        "r",
        "The capital of X is",
        "Franklin",
        target_aliases=("Franklin, Kentucky",),
        edit_group="case-1",
        locality=(PromptAnswer("Triple H is employed by", "WWE", "hop", ("World Wrestling Federation",)),),
    )
    raw = json.loads(json.dumps(record.to_json()))
    assert raw["target_aliases"] == ["Franklin, Kentucky"] and raw["locality"][0]["answer_aliases"]
    assert EditRecord.from_json(raw) == record


def test_records_without_aliases_are_written_as_before():
    record = EditRecord("r", "p", "t", locality=(PromptAnswer("q", "a", "k"),))
    assert set(record.to_json()) == {
        "record_id",
        "prompt",
        "target_new",
        "target_true",
        "subject",
        "rephrase_prompts",
        "locality",
        "portability",
    }
    assert set(record.to_json()["locality"][0]) == {"prompt", "answer", "kind"}


def test_every_reader_is_named_in_the_format_type():
    from typing import get_args

    from editing.data.records import DatasetFormat

    assert set(get_args(DatasetFormat)) == set(READERS)


def test_real_knowedit_zsre_by_subset_name():
    path = DATA_DIR / "knowedit_zsre" / "ZsRE-test-all.json"
    if not path.is_file():
        pytest.skip(f"{path} is not on this machine")
    records = read_records(path, "knowedit-zsre").records
    assert len(records) == 1301 and records[0].record_id == "knowedit-zsre-0"
    # Same content as under the reader's first name, only the ids differ.
    legacy = read_records(path).records
    assert [dataclasses.replace(r, record_id="") for r in records] == [
        dataclasses.replace(r, record_id="") for r in legacy
    ]
