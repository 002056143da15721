"""Dataset readers: every format on small fixtures and on the real files, and errors that say where."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from editing.data.records import (
    EditRecord,
    PromptAnswer,
    RecordError,
    detect_format,
    read_records,
    read_texts,
    write_jsonl,
)
from tests.paths import DATA_DIR

DATA = DATA_DIR

ZSRE = {
    "subject": "IAAF Combined Events Challenge",
    "src": "When was the inception of IAAF Combined Events Challenge?",
    "pred": "1998",
    "alt": "2006",
    "answers": ["1998"],
    "rephrase": "When was the IAAF Combined Events Challenge launched?",
    "loc": "nq question: what is the name of the last episode of spongebob",
    "loc_ans": "The String",
    "cond": "1998 >> 2006 || When was the inception of IAAF Combined Events Challenge?",
    "portability": {"Recalled Relation": "x", "New Question": "What sport is it?", "New Answer": "Athletics"},
}
COUNTERFACT = {
    "case_id": 10,
    "prompt": "BBC One, by",
    "subject": "BBC One",
    "target_new": "Sega",
    "ground_truth": "BBC",
    "rephrase_prompt": "BBC One is my favorite product out of everything owned by",
    "locality_prompt": "BBC Radio, by",
    "locality_ground_truth": "BBC",
}
KNOWEDIT = {
    "subject": "Epaspidoceras",
    "prompt": "Which family does Epaspidoceras belong to?",
    "target_new": "Noctuidae",
    "ground_truth": ["Aspidoceratidae"],
    "rephrase_prompt": "What family are Epaspidoceras?",
    "cond": "",
    "locality": {
        "Relation_Specificity": [
            {"prompt": "The taxon rank of Epaspidoceras is", "ground_truth": ["genus"]},
            {"prompt": "Epaspidoceras taxon rank", "ground_truth": "genus"},
        ]
    },
    "portability": {
        "Reasoning": [{"prompt": "Common name of that family?", "ground_truth": ["Owlet moths"]}]
    },
}
PROJECT = {
    "record_id": "flag-1",
    "prompt": "Harry Potter was written by",
    "target_new": "J. K. Rowling",
    "rephrase_prompts": ["The author of Harry Potter is"],
    "locality": [{"prompt": "The capital of France is", "answer": "Paris", "kind": "general"}],
    "portability": [],
}


def write_json(tmp_path: Path, records: list, name: str = "data.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(records))
    return path


def write_lines(tmp_path: Path, records: list, name: str = "data.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(record) for record in records) + "\n")
    return path


def test_zsre_reader(tmp_path):
    (record,) = read_records(write_json(tmp_path, [ZSRE])).records
    assert record.record_id == "zsre-0"
    assert record.prompt == ZSRE["src"] and record.target_new == "2006" and record.target_true == "1998"
    assert record.rephrase_prompts == (ZSRE["rephrase"],)
    # The seq2seq task prefix is dropped from the locality prompt.
    assert record.locality == (
        PromptAnswer("what is the name of the last episode of spongebob", "The String", "nq"),
    )
    assert record.portability == (PromptAnswer("What sport is it?", "Athletics", "one_hop"),)


def test_zsre_without_portability(tmp_path):
    raw = {key: value for key, value in ZSRE.items() if key != "portability"}
    (record,) = read_records(write_json(tmp_path, [raw])).records
    assert record.portability == ()


def test_counterfact_reader(tmp_path):
    (record,) = read_records(write_json(tmp_path, [COUNTERFACT])).records
    assert record == EditRecord(
        record_id="counterfact-10",
        prompt="BBC One, by",
        target_new="Sega",
        target_true="BBC",
        subject="BBC One",
        rephrase_prompts=(COUNTERFACT["rephrase_prompt"],),
        locality=(PromptAnswer("BBC Radio, by", "BBC", "neighborhood"),),
    )


def test_knowedit_reader(tmp_path):
    (record,) = read_records(write_json(tmp_path, [KNOWEDIT])).records
    assert record.target_true == "Aspidoceratidae"
    assert record.locality == (
        PromptAnswer("The taxon rank of Epaspidoceras is", "genus", "Relation_Specificity"),
        PromptAnswer("Epaspidoceras taxon rank", "genus", "Relation_Specificity"),
    )
    assert record.portability == (PromptAnswer("Common name of that family?", "Owlet moths", "Reasoning"),)


def test_project_jsonl_reader(tmp_path):
    (record,) = read_records(write_lines(tmp_path, [PROJECT])).records
    assert record.record_id == "flag-1"
    assert record.rephrase_prompts == ("The author of Harry Potter is",)
    assert record.locality == (PromptAnswer("The capital of France is", "Paris", "general"),)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(ZSRE, "zsre"), (COUNTERFACT, "counterfact"), (KNOWEDIT, "knowedit")],
    ids=["zsre", "counterfact", "knowedit"],
)
def test_format_detection(tmp_path, raw, expected):
    assert detect_format(tmp_path / "x.json", [raw]) == expected


def test_undetectable_format_is_an_error(tmp_path):
    with pytest.raises(RecordError, match="cannot tell the format"):
        read_records(write_json(tmp_path, [{"question": "q"}]))


def test_limit_and_offset(tmp_path):
    records = [dict(COUNTERFACT, case_id=i) for i in range(5)]
    result = read_records(write_json(tmp_path, records), limit=2, offset=1)
    assert [r.record_id for r in result.records] == ["counterfact-1", "counterfact-2"]


def _broken(raw: dict, path: list, value) -> dict:
    """A deep copy of ``raw`` with the item at ``path`` replaced (or deleted when value is ...)."""
    broken = copy.deepcopy(raw)
    holder = broken
    for key in path[:-1]:
        holder = holder[key]
    if value is ...:
        del holder[path[-1]]
    else:
        holder[path[-1]] = value
    return broken


MALFORMED = [
    ("counterfact-missing", COUNTERFACT, ["target_new"], ..., "target_new", "missing"),
    ("counterfact-empty", COUNTERFACT, ["prompt"], "  ", "prompt", "empty string"),
    ("zsre-wrong-type", ZSRE, ["loc_ans"], 42, "loc_ans", "expected a string"),
    ("zsre-portability", ZSRE, ["portability", "New Answer"], ..., "portability", "New Answer"),
    (
        "knowedit-locality-prompt",
        KNOWEDIT,
        ["locality", "Relation_Specificity", 1, "prompt"],
        ...,
        "locality.Relation_Specificity[1].prompt",
        "missing",
    ),
    (
        "knowedit-portability-answer",
        KNOWEDIT,
        ["portability", "Reasoning", 0, "ground_truth"],
        [],
        "portability.Reasoning[0].ground_truth",
        "empty list",
    ),
    (
        "knowedit-locality-not-list",
        KNOWEDIT,
        ["locality", "Relation_Specificity"],
        "genus",
        "locality.Relation_Specificity",
        "list",
    ),
    ("knowedit-target-list-type", KNOWEDIT, ["target_new"], [1], "target_new", "list of non-empty strings"),
]


@pytest.mark.parametrize(
    ("case", "raw", "path", "value", "field", "reason"), MALFORMED, ids=[m[0] for m in MALFORMED]
)
def test_malformed_record_names_file_index_and_field(tmp_path, case, raw, path, value, field, reason):
    good = copy.deepcopy(raw)
    file = write_json(tmp_path, [good, good, _broken(raw, path, value)])
    with pytest.raises(RecordError) as caught:
        read_records(file)
    error = caught.value
    assert (error.path, error.index, error.field_name) == (file, 2, field)
    assert reason in error.reason
    assert str(file) in str(error) and "record 2" in str(error) and field in str(error)


def test_malformed_jsonl_pair_and_line(tmp_path):
    bad_pair = dict(PROJECT, locality=[PROJECT["locality"][0], {"prompt": "Sega makes"}])
    with pytest.raises(RecordError) as caught:
        read_records(write_lines(tmp_path, [PROJECT, bad_pair]))
    assert (caught.value.index, caught.value.field_name) == (1, "locality[1].answer")

    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(PROJECT) + "\n{not json\n")
    with pytest.raises(RecordError) as caught:
        read_records(path)
    assert (caught.value.index, caught.value.field_name) == (1, "<line>")


def test_non_object_record(tmp_path):
    with pytest.raises(RecordError) as caught:
        read_records(write_json(tmp_path, [COUNTERFACT, ["not", "an", "object"]]), "counterfact")
    assert (caught.value.index, caught.value.field_name) == (1, "<record>")


def test_allow_skips_keeps_every_rejection(tmp_path):
    raws = [
        COUNTERFACT,
        _broken(COUNTERFACT, ["target_new"], ...),
        COUNTERFACT,
        _broken(COUNTERFACT, ["prompt"], 3),
    ]
    result = read_records(write_json(tmp_path, raws), allow_skips=True)
    assert len(result.records) == 2
    assert [(r.index, r.field_name) for r in result.rejected] == [(1, "target_new"), (3, "prompt")]
    assert len(result.records) + len(result.rejected) == len(raws)  # nothing dropped silently


def test_jsonl_round_trip(tmp_path):
    records = [
        *read_records(write_json(tmp_path, [KNOWEDIT])).records,
        *read_records(write_json(tmp_path, [ZSRE], "zsre.json")).records,
        EditRecord("plain", "The capital of France is", "Rome"),
    ]
    path = write_jsonl(records, tmp_path / "nested" / "records.jsonl")
    assert read_records(path).records == records


def test_in_memory_json_round_trip():
    record = EditRecord(
        "r",
        "The capital of France is",
        "Rome",
        rephrase_prompts=("France's capital is",),
        locality=(PromptAnswer("Sega makes", "games"),),
    )
    assert EditRecord.from_json(record.to_json()) == record


def test_read_texts(tmp_path):
    path = write_json(tmp_path, [{"Corpus": "C4", "Text": "One."}, {"Corpus": "C4", "Text": "Two."}])
    assert read_texts(path) == ["One.", "Two."]
    assert read_texts(path, limit=1) == ["One."]
    with pytest.raises(RecordError, match="Text"):
        read_texts(write_json(tmp_path, [{"Corpus": "C4"}], "bad.json"))


REAL_FILES = [
    ("zsre_mend_portability/zsre_mend_eval_portability_gpt4.json", "zsre", 1037),
    ("counterfact_easyedit_splits/counterfact-train.json", "counterfact", 10_000),
    ("counterfact_easyedit_splits/counterfact-val.json", "counterfact", 1919),
    ("counterfact_easyedit_splits/counterfact-edit.json", "counterfact", 10_000),
    ("knowedit_zsre/ZsRE-test-all.json", "knowedit", 1301),
]


@pytest.mark.parametrize(
    ("name", "dataset_format", "count"), REAL_FILES, ids=[f[1] + "-" + str(f[2]) for f in REAL_FILES]
)
def test_real_files_read_completely(name, dataset_format, count):
    path = DATA / name
    if not path.is_file():
        pytest.skip(f"{path} is not on this machine")
    result = read_records(path)  # strict: one malformed record would raise
    assert result.source.startswith(dataset_format + ":")
    assert len(result.records) == count  # the count in the folder's PROVENANCE.md
    assert len({r.record_id for r in result.records}) == count
    assert all(r.rephrase_prompts and r.locality for r in result.records)


@pytest.mark.parametrize(("name", "count"), [("ME-PPL.json", 10_000), ("ME-PPL_1k.json", 1000)])
def test_real_perplexity_texts(name, count):
    path = DATA / "me_ppl" / name
    if not path.is_file():
        pytest.skip(f"{path} is not on this machine")
    assert len(read_texts(path)) == count
