"""The incoming-flags suite: each rule rejects its case with a reason naming the field; no row is lost."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from expectations.flags import (
    FLAG_COLUMNS,
    FlagLimits,
    FlagLimitsError,
    FlagSchemaError,
    parse_paraphrases,
    validate_flags,
)

BASE_MODEL = "smollm2-135m-instruct"


def flag(flag_id: str | None, **changes) -> dict:
    row = {
        "flag_id": flag_id,
        "model_name": BASE_MODEL,
        "model_version": "3",
        "prompt": "The capital of Australia is",
        "prediction": "Sydney",
        "correction": "Canberra",
        "paraphrases": '["Australia\'s capital city is"]',
        "subject": "Australia",
        "reason": "wrong capital",
        "reporter": "alice@example.com",
        "flagged_at": "2025-03-01T12:00:00Z",
    }
    return {**row, **changes}


VALID_ROWS = [
    flag("ok-json-paraphrases"),
    flag(
        "ok-list-paraphrases",
        paraphrases=["Australia's seat of government is"],
        flagged_at=pd.Timestamp(2025, 3, 1),
    ),
    flag("ok-no-optionals", paraphrases=None, subject=None, reason=None, model_version=None),
    flag("ok-numpy-paraphrases", paraphrases=np.array(["Canberra is the capital of"])),
    flag("ok-at-limits", prompt="p" * 500, correction="c" * 200),
]

# (flag_id, changes, the reason the row must get). Each case breaks exactly one rule.
INVALID_CASES = [
    ("missing-prompt", {"prompt": None}, "prompt is missing"),
    ("missing-reporter", {"reporter": None}, "reporter is missing"),
    ("missing-flagged-at", {"flagged_at": None}, "flagged_at is missing"),
    ("missing-prediction", {"prediction": None}, "prediction is missing"),
    ("missing-model-name", {"model_name": None}, "model_name is missing"),
    ("blank-correction", {"correction": "  \t "}, "correction is empty or only whitespace"),
    ("empty-prompt", {"prompt": ""}, "prompt is empty or only whitespace"),
    ("numeric-prompt", {"prompt": 42}, "prompt must be text, got int"),
    ("list-subject", {"subject": ["Australia"]}, "subject must be text, got list"),
    (
        "same-as-prediction",
        {"correction": "  sydney "},
        "correction equals prediction (ignoring case and whitespace)",
    ),
    (
        "escape-in-prompt",
        {"prompt": "Sydney\x1b[2J is"},
        "prompt holds control character U+001B at position 6",
    ),
    ("nul-in-reporter", {"reporter": "al\x00ice"}, "reporter holds control character U+0000 at position 2"),
    ("long-prompt", {"prompt": "p" * 501}, "prompt longer than 500 characters (501)"),
    ("long-correction", {"correction": "c" * 201}, "correction longer than 200 characters (201)"),
    ("other-model", {"model_name": "gpt2"}, f"model_name 'gpt2' is not the base being fixed '{BASE_MODEL}'"),
    ("bad-paraphrase-json", {"paraphrases": "[not json"}, "paraphrases is not a list of non-empty strings"),
    ("empty-paraphrase", {"paraphrases": ["fine", " "]}, "paraphrases is not a list of non-empty strings"),
    ("bad-timestamp", {"flagged_at": "last tuesday"}, "flagged_at 'last tuesday' is not a timestamp"),
    ("numeric-timestamp", {"flagged_at": 1740830400}, "flagged_at 1740830400 is not a timestamp"),
]
DUPLICATE_ROWS = [flag("dup"), flag("dup", correction="Canberra, ACT")]
NO_ID_ROW = flag(None)


@pytest.fixture(scope="module")
def flags_frame() -> pd.DataFrame:
    rows = [*VALID_ROWS, *(flag(flag_id, **changes) for flag_id, changes, _ in INVALID_CASES)]
    rows += [*DUPLICATE_ROWS, NO_ID_ROW]
    # A shuffled, non-positional index: reasons must still land on the right rows.
    return pd.DataFrame(rows, index=[f"input-{n}" for n in np.random.default_rng(0).permutation(len(rows))])


@pytest.fixture(scope="module")
def validation(flags_frame):
    return validate_flags(flags_frame, expected_model_name=BASE_MODEL)


def test_valid_flags_pass(validation):
    assert validation.valid_ids == [row["flag_id"] for row in VALID_ROWS]
    for row in VALID_ROWS:
        assert row["flag_id"] not in validation.invalid


@pytest.mark.parametrize(
    ("flag_id", "changes", "reason"), INVALID_CASES, ids=[case[0] for case in INVALID_CASES]
)
def test_each_rule_rejects_its_case_with_a_reason_naming_the_field(validation, flag_id, changes, reason):
    reasons = validation.invalid[flag_id]
    assert len(reasons) == 1, reasons  # the case breaks one rule, and only that rule reports it
    assert reasons[0].startswith(reason)
    field = next(iter(changes))
    assert reasons[0].startswith(field)


def test_duplicate_flag_ids_hold_back_every_copy(validation, flags_frame):
    assert "dup" not in validation.valid_ids
    assert validation.invalid["dup"] == ["flag_id 'dup' is not unique (2 rows share it)"]
    duplicate_rows = [row for row, flag_id in enumerate(flags_frame["flag_id"]) if flag_id == "dup"]
    assert len(duplicate_rows) == 2
    assert all(validation.row_reasons[row] for row in duplicate_rows)


def test_a_flag_without_an_id_is_reported_by_its_row(validation, flags_frame):
    row = len(flags_frame) - 1
    assert validation.invalid[f"<row {row}>"] == ["flag_id is missing"]


def test_every_row_is_accounted_for(validation, flags_frame):
    assert len(validation.row_reasons) == len(flags_frame)
    assert validation.valid_mask.count(True) == len(validation.valid_ids) == len(VALID_ROWS)
    for row, flag_id in enumerate(flags_frame["flag_id"]):
        key = f"<row {row}>" if pd.isna(flag_id) else flag_id
        if validation.row_reasons[row]:
            assert key in validation.invalid and key not in validation.valid_ids
            assert set(validation.row_reasons[row]) <= set(validation.invalid[key])
        else:
            assert key in validation.valid_ids and key not in validation.invalid
    assert len(validation.invalid) == len(INVALID_CASES) + 2  # the duplicates share one key


def test_result_is_strict_json_and_every_expectation_says_why_it_exists(validation):
    as_text = json.dumps(validation.result_json, allow_nan=False)
    assert json.loads(as_text)["success"] is False
    configs = [item["expectation_config"] for item in validation.result_json["results"]]
    assert len(configs) >= 15
    for config in configs:
        assert config["meta"]["reason"], config


def test_limits_are_configurable():
    frame = pd.DataFrame([flag("short", prompt="Sky colour:", correction="blue"), flag("long")])

    result = validate_flags(
        frame, expected_model_name=BASE_MODEL, limits=FlagLimits(max_prompt_chars=12, max_correction_chars=4)
    )

    assert result.valid_ids == ["short"]
    assert result.invalid["long"] == [
        "prompt longer than 12 characters (27)",
        "correction longer than 4 characters (8)",
    ]


def test_empty_frame_yields_no_verdicts():
    result = validate_flags(pd.DataFrame(columns=list(FLAG_COLUMNS)), expected_model_name=BASE_MODEL)
    assert result.valid_ids == [] and result.invalid == {} and result.row_reasons == []


def test_missing_columns_are_a_schema_error_naming_them():
    frame = pd.DataFrame([flag("f1")]).drop(columns=["reporter", "flagged_at"])
    with pytest.raises(FlagSchemaError, match=r"\['reporter', 'flagged_at'\]"):
        validate_flags(frame, expected_model_name=BASE_MODEL)


@pytest.mark.parametrize(
    "values", [{"max_prompt_chars": 0}, {"max_correction_chars": -5}, {"max_prompt_chars": 2.5}]
)
def test_invalid_limits_are_rejected_naming_the_field(values):
    with pytest.raises(FlagLimitsError, match=next(iter(values))):
        FlagLimits.from_dict(values)
    assert FlagLimits.from_dict(FlagLimits(max_prompt_chars=9).to_dict()) == FlagLimits(max_prompt_chars=9)


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [
        (None, ()),
        (float("nan"), ()),
        ("", ()),
        ('["a", "b"]', ("a", "b")),
        (["a"], ("a",)),
        (np.array(["x"]), ("x",)),
    ],
)
def test_parse_paraphrases_accepts_lists_json_and_nothing(raw, parsed):
    assert parse_paraphrases(raw) == parsed


@pytest.mark.parametrize("raw", ["[1, 2]", '{"a": 1}', "nope", ["ok", ""], [3]])
def test_parse_paraphrases_rejects_malformed_values(raw):
    with pytest.raises(ValueError):
        parse_paraphrases(raw)
