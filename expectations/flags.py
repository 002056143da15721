"""The incoming-flags suite: which user-flagged wrong predictions may become model edits.

One row per flag with columns ``FLAG_COLUMNS``. Every expectation carries the reason it exists in its
meta. Checks GX cannot express on raw values (the correction differs from the prediction once case and
whitespace are ignored; a field holds text; paraphrases parse; ``flagged_at`` is a timestamp) run on
derived ``check_*`` columns added to a copy of the frame. Each failing row gets one human-readable
reason per failed expectation, naming the field; every row ends up valid or invalid, none is dropped.
"""

from __future__ import annotations

import json
import logging
import unicodedata
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any

from expectations.context import NAME_KEY, REASON_KEY, failing_indices, result_to_json, validate_frame

if TYPE_CHECKING:
    import pandas as pd

LOGGER = logging.getLogger(__name__)

FLAG_COLUMNS = (
    "flag_id", "model_name", "model_version", "prompt", "prediction", "correction",
    "paraphrases", "subject", "reason", "reporter", "flagged_at",
)  # fmt: skip
# Why each required field must be present: the reason stored on its expectation.
REQUIRED_FIELDS = {
    "flag_id": "the flag is traced by its id from intake to the promoted model",
    "model_name": "a flag must say which model made the mistake",
    "prompt": "the edit is made on the prompt that produced the wrong prediction",
    "prediction": "without the wrong answer there is nothing to check the correction against",
    "correction": "the correction is the edit target",
    "reporter": "every change to the model must be attributable to a person or system",
    "flagged_at": "flags are ordered and expired by their time",
}
TEXT_FIELDS = (
    "model_name",
    "model_version",
    "prompt",
    "prediction",
    "correction",
    "subject",
    "reason",
    "reporter",
)


class FlagSchemaError(ValueError):
    """The flags frame lacks required columns, so no row can be judged."""


class FlagLimitsError(ValueError):
    """A flag limit is not a positive whole number."""


@dataclass(frozen=True)
class FlagLimits:
    """Size limits for one flag, in characters."""

    max_prompt_chars: int = 500  # long prompts are documents, not single mistakes to fix by an edit
    max_correction_chars: int = 200  # an edit target is a short answer; long text means a rewrite request

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise FlagLimitsError(f"FlagLimits.{item.name} must be a positive integer, got {value!r}")

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FlagLimits:
        unknown = sorted(set(values) - {item.name for item in fields(cls)})
        if unknown:
            raise FlagLimitsError(f"FlagLimits: unknown field(s) {unknown}")
        return cls(**values)


@dataclass(frozen=True)
class FlagValidation:
    """The verdict on a batch of flags. ``row_reasons`` follows the input rows; empty means valid."""

    valid_ids: list[str]
    invalid: dict[str, list[str]]  # flag_id (or "<row N>" when it has none) -> every reason it failed
    result_json: dict[str, Any]
    row_reasons: list[list[str]]

    @property
    def valid_mask(self) -> list[bool]:
        return [not reasons for reasons in self.row_reasons]


def parse_paraphrases(value: Any) -> tuple[str, ...]:
    """Paraphrases as a tuple of non-empty strings, from a list or a JSON string of one; None is none.

    Raises ``ValueError`` saying what is wrong otherwise.
    """
    if _missing(value):
        return ()
    if type(value).__module__ == "numpy":
        value = value.tolist()  # list columns read back from Parquet or Arrow arrive as numpy arrays
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except json.JSONDecodeError as error:
            raise ValueError(f"not valid JSON ({error.msg})") from error
    if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"expected a list of strings, got {value!r}")
    if not all(item.strip() for item in value):
        raise ValueError("contains an empty paraphrase")
    return tuple(value)


def validate_flags(
    frame: pd.DataFrame, *, expected_model_name: str, limits: FlagLimits = FlagLimits()
) -> FlagValidation:
    """Judge every flag in ``frame``; a row is valid only if it meets every expectation."""
    if not isinstance(expected_model_name, str) or not expected_model_name.strip():
        raise ValueError(f"expected_model_name must be a non-empty string, got {expected_model_name!r}")
    missing = [column for column in FLAG_COLUMNS if column not in frame.columns]
    if missing:
        raise FlagSchemaError(f"flags frame lacks column(s) {missing}; it has {list(frame.columns)}")
    # Positional index: GX reports failing rows by index label, which must map back to input rows.
    checked = _with_derived_checks(frame.loc[:, list(FLAG_COLUMNS)].reset_index(drop=True))
    rules = _rules(checked, limits, expected_model_name)
    result = validate_frame(
        checked, suite_name="incoming_flags", expectations=[rule.expectation for rule in rules]
    )
    explain = {rule.name: rule.explain for rule in rules}
    row_reasons: list[list[str]] = [[] for _ in range(len(checked))]
    for item in result.results:
        if not item.success:
            name = item.expectation_config.meta[NAME_KEY]
            for row in failing_indices(item):
                row_reasons[row].append(explain[name](row))
    keys = [_flag_key(row, value) for row, value in enumerate(checked["flag_id"])]
    invalid: dict[str, list[str]] = {}
    for key, reasons in zip(keys, row_reasons, strict=True):
        if reasons:  # rows sharing a flag_id pool their reasons under it, each reason once
            invalid[key] = list(dict.fromkeys([*invalid.get(key, []), *reasons]))
    valid_ids = [key for key, reasons in zip(keys, row_reasons, strict=True) if not reasons]
    LOGGER.info("flags: %d valid, %d invalid of %d rows", len(valid_ids), len(invalid), len(checked))
    return FlagValidation(valid_ids, invalid, result_to_json(result), row_reasons)


@dataclass(frozen=True)
class _Rule:
    name: str
    expectation: Any  # a great_expectations Expectation carrying meta {name, reason}
    explain: Callable[[int], str]  # row position -> why that row failed, naming the field


def _rules(checked: pd.DataFrame, limits: FlagLimits, expected_model_name: str) -> list[_Rule]:
    return [*_field_rules(checked, limits), *_row_rules(checked, expected_model_name)]


def _rule(
    name: str, kind: type, column: str, why: str, explain: Callable[[int], str], **kwargs: Any
) -> _Rule:
    return _Rule(name, kind(column=column, meta={NAME_KEY: name, REASON_KEY: why}, **kwargs), explain)


def _field_rules(checked: pd.DataFrame, limits: FlagLimits) -> list[_Rule]:
    """Per-field rules: present, text (not blank where required), within its length limit."""
    import great_expectations.expectations as gxe

    rules = [
        _rule(
            f"{field}_present",
            gxe.ExpectColumnValuesToNotBeNull,
            field,
            why,
            lambda _, f=field: f"{f} is missing",
        )
        for field, why in REQUIRED_FIELDS.items()
    ]
    for field in TEXT_FIELDS:
        rules.append(_rule(
            f"{field}_is_text", gxe.ExpectColumnValuesToBeInSet, f"check_{field}_is_text",
            f"{field} is stored and compared as text"
            + (", and a blank one carries no information" if field in REQUIRED_FIELDS else ""),
            lambda row, f=field: _text_problem(f, checked.at[row, f]),
            value_set=[True],
        ))  # fmt: skip
    for field, limit in (("prompt", limits.max_prompt_chars), ("correction", limits.max_correction_chars)):
        rules.append(_rule(
            f"{field}_length", gxe.ExpectColumnValuesToBeBetween, f"check_{field}_chars",
            f"FlagLimits.max_{field}_chars: a longer {field} is not a single factual mistake",
            lambda row, f=field, n=limit: f"{f} longer than {n} characters ({checked.at[row, f'check_{f}_chars']:.0f})",
            max_value=limit,
        ))  # fmt: skip
    return rules


def _row_rules(checked: pd.DataFrame, expected_model_name: str) -> list[_Rule]:
    """Rules across fields or rows: a real correction, the right model, unique ids, parseable extras."""
    import great_expectations.expectations as gxe

    def value(row: int, column: str) -> Any:
        return checked.at[row, column]

    counts = checked["flag_id"].value_counts(dropna=True)
    return [
        _rule(
            "correction_differs_from_prediction", gxe.ExpectColumnValuesToBeInSet, "check_correction_differs",
            "editing the model towards what it already says is a no-op that still costs locality",
            lambda row: f"correction equals prediction (ignoring case and whitespace): {value(row, 'correction')!r}",
            value_set=[True],
        ),
        _rule(
            "model_name_is_base", gxe.ExpectColumnValuesToBeInSet, "model_name",
            "an edit only applies to the base model it was computed for",
            lambda row: f"model_name {value(row, 'model_name')!r} is not the base being fixed {expected_model_name!r}",
            value_set=[expected_model_name],
        ),
        _rule(
            "flag_id_unique", gxe.ExpectColumnValuesToBeUnique, "flag_id",
            "a repeated id makes it ambiguous which flag an edit fixes, so every copy is held back",
            lambda row: f"flag_id {value(row, 'flag_id')!r} is not unique ({counts[value(row, 'flag_id')]} rows share it)",
        ),
        _rule(
            "paraphrases_well_formed", gxe.ExpectColumnValuesToBeInSet, "check_paraphrases_well_formed",
            "paraphrases become extra edit inputs and must parse",
            lambda row: f"paraphrases is not a list of non-empty strings or a JSON string of one: {value(row, 'paraphrases')!r}",
            value_set=[True],
        ),
        _rule(
            "flagged_at_is_timestamp", gxe.ExpectColumnValuesToBeInSet, "check_flagged_at_is_timestamp",
            "flags are ordered and expired by their time",
            lambda row: f"flagged_at {value(row, 'flagged_at')!r} is not a timestamp",
            value_set=[True],
        ),
    ]  # fmt: skip


def _with_derived_checks(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` plus ``check_*`` columns; a check is None (so GX skips it) where its source is missing."""
    import pandas as pd

    def derive(column: str, test: Callable[[Any], Any], dtype: str = "object") -> pd.Series:
        return pd.Series([None if _missing(item) else test(item) for item in frame[column]], dtype=dtype)

    derived = {
        f"check_{field}_is_text": derive(field, lambda item, f=field: not _text_problem(f, item))
        for field in TEXT_FIELDS
    }
    for field in ("prompt", "correction"):
        derived[f"check_{field}_chars"] = derive(
            field, lambda item: float(len(item)) if isinstance(item, str) else None, "float64"
        )
    derived["check_correction_differs"] = pd.Series(
        [
            None
            if _missing(correction) or _missing(prediction)
            else _normalise(correction) != _normalise(prediction)
            for correction, prediction in zip(frame["correction"], frame["prediction"], strict=True)
        ],
        dtype="object",
    )
    derived["check_paraphrases_well_formed"] = pd.Series(
        [_parses(parse_paraphrases, item) for item in frame["paraphrases"]], dtype="object"
    )
    derived["check_flagged_at_is_timestamp"] = derive("flagged_at", _is_timestamp)
    return frame.assign(**derived)


def _text_problem(field: str, item: Any) -> str:
    """Why ``item`` is not acceptable text for ``field`` (required fields must not be blank), or ""."""
    if not isinstance(item, str):
        return f"{field} must be text, got {type(item).__name__}"
    if field in REQUIRED_FIELDS and not item.strip():
        return f"{field} is empty or only whitespace"
    # The log may hold lines no `mend flag` checked: control characters (other than line breaks, LF and
    # NEL, and tabs) would reach terminals, logs and the review page, so such a flag is quarantined.
    for position, character in enumerate(item):
        if unicodedata.category(character) == "Cc" and character not in "\n\t\x85":
            return f"{field} holds control character U+{ord(character):04X} at position {position}"
    return ""


def _is_timestamp(item: Any) -> bool:
    import pandas as pd

    if isinstance(item, datetime):  # pandas Timestamps are datetimes too
        return True
    if not isinstance(item, str):
        return False  # a bare number could be seconds or nanoseconds since the epoch: ambiguous
    try:
        return not pd.isna(pd.Timestamp(item))  # an empty string parses to NaT
    except (ValueError, TypeError):
        return False


def _parses(parse: Callable[[Any], Any], item: Any) -> bool:
    try:
        parse(item)
    except (ValueError, TypeError):
        return False
    return True


def _missing(item: Any) -> bool:
    import pandas as pd

    return item is None or (pd.api.types.is_scalar(item) and bool(pd.isna(item)))


def _normalise(text: Any) -> str:
    return " ".join(str(text).split()).casefold()


def _flag_key(row: int, flag_id: Any) -> str:
    return f"<row {row}>" if _missing(flag_id) else str(flag_id)
