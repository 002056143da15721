"""What the edit gate reads: the per-edit evaluation table and the model summary, checked and made frames.

The gate validates two pandas frames: the per-edit table (``record_id, edit_success,
paraphrase_success, locality_unchanged, locality_kl, locality_same_subject``, one row per edit, positionally indexed so GX's
failing rows map back to record ids) and a one-row model frame built from the evaluation summary
(perplexity before and after, retention, and the relative perplexity increase derived from them).
Input that is malformed (a missing column or key, a non-numeric value) raises ``GateInputError``:
that is a bug upstream, not a verdict on the model. pandas is imported inside the functions.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

TABLE_COLUMNS = (
    "record_id",
    "edit_success",
    "paraphrase_success",
    "locality_unchanged",
    "locality_kl",
    "locality_same_subject",
)
METRIC_COLUMNS = TABLE_COLUMNS[1:]
# Columns an older evaluation table may lack: read as missing values (their checks are not applicable).
OPTIONAL_COLUMNS = ("locality_same_subject",)
SUMMARY_KEYS = ("perplexity_before", "perplexity_after", "retention")


class GateInputError(ValueError):
    """The evaluation table or summary handed to the gate is malformed (a bug upstream, not a verdict)."""


def edits_frame(table: pd.DataFrame) -> pd.DataFrame:
    """The table's gate columns in ``TABLE_COLUMNS`` order, metrics as float64, rows indexed from 0."""
    import pandas as pd

    table = table.assign(**{column: None for column in OPTIONAL_COLUMNS if column not in table.columns})
    missing = [column for column in TABLE_COLUMNS if column not in table.columns]
    if missing:
        raise GateInputError(f"evaluation table lacks column(s) {missing}; it has {list(table.columns)}")
    # Positional index: GX reports failing rows by index label, which must map back to record ids.
    frame = table.loc[:, list(TABLE_COLUMNS)].reset_index(drop=True)
    for column in METRIC_COLUMNS:
        try:
            frame[column] = pd.to_numeric(frame[column], errors="raise").astype("float64")
        except (TypeError, ValueError) as error:
            raise GateInputError(f"evaluation table column {column!r} is not numeric: {error}") from error
    return frame


def model_frame(summary: dict[str, Any]) -> pd.DataFrame:
    """One row: the summary's values as floats (``None`` becomes NaN) plus ``perplexity_increase``."""
    import pandas as pd

    missing = [key for key in SUMMARY_KEYS if key not in summary]
    if missing:
        raise GateInputError(f"evaluation summary lacks key(s) {missing}; retention may be None, not absent")
    values = {key: _as_float(key, summary[key]) for key in SUMMARY_KEYS}
    before, after = values["perplexity_before"], values["perplexity_after"]
    # NaN (not inf) when the two cannot be compared: GX treats it as missing, so the check fails on it.
    comparable = math.isfinite(before) and math.isfinite(after) and before > 0
    values["perplexity_increase"] = after / before - 1.0 if comparable else math.nan
    return pd.DataFrame({key: [value] for key, value in values.items()}, dtype="float64")


def _as_float(key: str, value: Any) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise GateInputError(f"evaluation summary {key!r} must be a number or None, got {value!r}")
    return float(value)
