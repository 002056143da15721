"""The edit gate: a Great Expectations suite over an edited model's evaluation, and the rule that enforces it.

Two batches are validated: the per-edit table (one row per edit) and a one-row model summary
(perplexity before and after, retention of previously promoted edits), both checked and turned into
frames by ``expectations.gate_inputs``. Their results are merged into one GX result, one Data Docs page
and one list of ``ExpectationOutcome``; the thresholds are named values in ``GateThresholds``.
``enforce`` raises ``GateFailed`` on any failure: a gate that only reports would let a broken model be
promoted. Thresholds compare with ``FLOAT_SLACK`` of room, so a value exactly at its threshold passes
even when floating-point averaging lands a hair on the wrong side of it.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from expectations.context import (
    NAME_KEY,
    REASON_KEY,
    ExpectationEvaluationError,
    failing_indices,
    merge_results,
    render_validation_page,
    result_to_json,
    results_by_name,
    table_section,
    validate_frame,
)
from expectations.gate_inputs import edits_frame, model_frame

if TYPE_CHECKING:
    import pandas as pd

LOGGER = logging.getLogger(__name__)

FLOAT_SLACK = 1e-9
DATA_DOCS_FILE = "edit_gate.html"
_MAX_LISTED_IDS = 10


class ThresholdError(ValueError):
    """A gate threshold is missing, of the wrong type or out of range."""


@dataclass(frozen=True)
class GateThresholds:
    """What an edited model must reach to be promoted. Rates are fractions in [0, 1]."""

    min_edit_success: float = 0.9  # mean teacher-forced token accuracy of the corrections
    min_paraphrase_success: float = 0.8  # the same on paraphrases, over edits that have any
    min_locality_unchanged: float = 0.95  # mean share of unrelated predictions left unchanged
    # The same over the edited subjects' other facts (same-subject probes), over edits that have any.
    min_locality_same_subject: float = 0.90
    max_perplexity_increase: float = 0.05  # relative: 0.05 allows after <= 1.05 * before
    min_retention: float = 0.95  # share of previously promoted edits that still hold

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ThresholdError(f"GateThresholds.{item.name} must be a finite number, got {value!r}")
            if item.name.startswith("min_") and not 0.0 <= value <= 1.0:
                raise ThresholdError(f"GateThresholds.{item.name} is a rate in [0, 1], got {value!r}")
            if item.name == "max_perplexity_increase" and value < 0:
                raise ThresholdError(f"GateThresholds.{item.name} must be >= 0, got {value!r}")
            object.__setattr__(self, item.name, float(value))

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GateThresholds:
        if not isinstance(values, dict):
            raise ThresholdError(f"GateThresholds: expected a JSON object, got {type(values).__name__}")
        unknown = sorted(set(values) - {item.name for item in fields(cls)})
        if unknown:
            raise ThresholdError(f"GateThresholds: unknown field(s) {unknown}")
        return cls(**values)

    def save(self, path: Path) -> Path:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return Path(path)

    @classmethod
    def load(cls, path: Path) -> GateThresholds:
        return cls.from_dict(json.loads(Path(path).read_text()))


@dataclass(frozen=True)
class ExpectationOutcome:
    """One gate expectation's verdict. ``observed`` is the measured value, or the number of bad rows."""

    name: str
    passed: bool
    observed: float | None
    threshold: float | None
    reason: str
    applicable: bool = True  # False: nothing to measure (e.g. no earlier edits); counts as passed


@dataclass(frozen=True)
class GateResult:
    passed: bool
    expectations: list[ExpectationOutcome]
    result_json: dict[str, Any] = field(repr=False)

    @property
    def failures(self) -> list[ExpectationOutcome]:
        return [outcome for outcome in self.expectations if not outcome.passed]

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "expectations": [asdict(outcome) for outcome in self.expectations]}


class GateFailed(Exception):
    """The candidate model failed the edit gate; ``result`` says which expectations and by how much."""

    def __init__(self, result: GateResult):
        self.result = result
        lines = [
            f"- {outcome.name}: observed {_number(outcome.observed)}, threshold {_number(outcome.threshold)}"
            f" ({outcome.reason})"
            for outcome in result.failures
        ]
        count = len(result.expectations)
        super().__init__(f"edit gate failed {len(lines)} of {count} expectations:\n" + "\n".join(lines))


def enforce(result: GateResult) -> None:
    """Raise ``GateFailed`` unless every expectation passed. The pipeline's gate task calls this."""
    if not result.passed or result.failures:
        raise GateFailed(result)
    LOGGER.info("edit gate passed all %d expectations", len(result.expectations))


Kind = Literal["mean_at_least", "max_at_most", "min_at_least", "present", "unit_interval", "unique", "rows"]


@dataclass(frozen=True)
class _Check:
    name: str  # threshold checks are named after their GateThresholds field
    batch: Literal["edits", "model"]
    kind: Kind
    column: str | None
    why: str


_CHECKS = (
    _Check("table_not_empty", "edits", "rows", None, "an empty evaluation proves nothing"),
    _Check("record_id_present", "edits", "present", "record_id", "every outcome must trace to its edit"),
    _Check("record_id_unique", "edits", "unique", "record_id", "a repeated edit would be counted twice"),
    _Check("edit_success_present", "edits", "present", "edit_success", "a missing score hides a failure"),
    _Check("edit_success_in_range", "edits", "unit_interval", "edit_success", "an accuracy is in [0, 1]"),
    _Check("paraphrase_success_in_range", "edits", "unit_interval", "paraphrase_success", "a rate in [0, 1]"),
    _Check("locality_unchanged_present", "edits", "present", "locality_unchanged", "a gap hides damage"),
    _Check("locality_unchanged_in_range", "edits", "unit_interval", "locality_unchanged", "a rate in [0, 1]"),
    _Check("locality_kl_present", "edits", "present", "locality_kl", "a NaN KL means the evaluation broke"),
    _Check(
        "locality_same_subject_in_range",
        "edits",
        "unit_interval",
        "locality_same_subject",
        "a rate in [0, 1]",
    ),
    _Check("min_edit_success", "edits", "mean_at_least", "edit_success", "edits must yield the corrections"),
    _Check("min_paraphrase_success", "edits", "mean_at_least", "paraphrase_success", "fixes must generalise"),
    _Check(
        "min_locality_unchanged", "edits", "mean_at_least", "locality_unchanged", "spare unrelated prompts"
    ),
    _Check(
        "min_locality_same_subject",
        "edits",
        "mean_at_least",
        "locality_same_subject",
        "keep the edited subjects' other facts",
    ),
    _Check("max_perplexity_increase", "model", "max_at_most", "perplexity_increase", "keep general fluency"),
    _Check("min_retention", "model", "min_at_least", "retention", "never undo fixes already promoted"),
)
_THRESHOLD_NAMES = frozenset(item.name for item in fields(GateThresholds))


def run_gate(table: pd.DataFrame, summary: dict[str, Any], thresholds: GateThresholds) -> GateResult:
    """Validate one candidate's evaluation against ``thresholds``; see ``enforce`` to act on the result."""
    edits, model = edits_frame(table), model_frame(summary)
    not_applicable = _not_applicable(edits, model)
    suites = {}
    for batch, frame in (("edits", edits), ("model", model)):
        checks = [check for check in _CHECKS if check.batch == batch and check.name not in not_applicable]
        suites[batch] = validate_frame(
            frame,
            suite_name=f"edit_gate.{batch}",
            expectations=[_expectation(check, thresholds) for check in checks],
        )
    merged = merge_results(suites.values(), suite_name="edit_gate")
    merged.meta["not_applicable"] = dict(not_applicable)
    outcomes = _outcomes(merged, not_applicable, thresholds, edits, summary)
    passed = all(outcome.passed for outcome in outcomes)
    if passed != merged.success:
        raise ExpectationEvaluationError(f"gate outcomes ({passed}) disagree with GX ({merged.success})")
    failing = sum(not outcome.passed for outcome in outcomes)
    LOGGER.info("edit gate %s: %d failing expectation(s)", "passed" if passed else "failed", failing)
    return GateResult(passed=passed, expectations=outcomes, result_json=result_to_json(merged))


def _outcomes(
    merged: Any,
    not_applicable: dict[str, str],
    thresholds: GateThresholds,
    edits: pd.DataFrame,
    summary: dict[str, Any],
) -> list[ExpectationOutcome]:
    """One outcome per check, in ``_CHECKS`` order, whether GX evaluated it or it was not applicable."""
    by_name = results_by_name(merged)
    record_ids = [
        f"<row {row}>" if value is None or value != value else str(value)  # value != value: NaN
        for row, value in enumerate(edits["record_id"])
    ]
    outcomes = []
    for check in _CHECKS:
        threshold = getattr(thresholds, check.name) if check.name in _THRESHOLD_NAMES else None
        if check.name in not_applicable:
            outcomes.append(
                ExpectationOutcome(check.name, True, None, threshold, not_applicable[check.name], False)
            )
        else:
            outcomes.append(_outcome(check, by_name[check.name], threshold, record_ids, summary))
    return outcomes


def write_data_docs(result: GateResult, out_dir: Path) -> Path:
    """Write the gate's Data Docs page (GX's validation page plus a decision table); return its path."""
    status = {True: "passed", False: "FAILED"}
    rows = [
        [
            outcome.name,
            status[outcome.passed] if outcome.applicable else "not applicable",
            _number(outcome.observed),
            _number(outcome.threshold),
            outcome.reason,
        ]
        for outcome in result.expectations
    ]
    decision = table_section(
        f"Edit gate decision: {status[result.passed]}",
        ["expectation", "status", "observed", "threshold", "reason"],
        rows,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / DATA_DOCS_FILE
    path.write_text(render_validation_page(result.result_json, extra_sections=[decision]))
    return path


def _not_applicable(edits: pd.DataFrame, model: pd.DataFrame) -> dict[str, str]:
    """Threshold checks with nothing to measure; they pass, and say so, instead of failing on no data."""
    reasons = {}
    if edits["paraphrase_success"].isna().all():
        reasons["min_paraphrase_success"] = "not applicable: no edit has paraphrases"
    if edits["locality_same_subject"].isna().all():
        reasons["min_locality_same_subject"] = "not applicable: no edit has same-subject probes"
    if model["retention"].isna().all():
        reasons["min_retention"] = "not applicable: no previously promoted edits to retain"
    return reasons


def _expectation(check: _Check, thresholds: GateThresholds) -> Any:
    import great_expectations.expectations as gxe

    meta = {NAME_KEY: check.name, REASON_KEY: check.why}
    threshold = getattr(thresholds, check.name) if check.name in _THRESHOLD_NAMES else 0.0
    column = {"column": check.column} if check.column else {}
    built = {
        "rows": lambda: gxe.ExpectTableRowCountToBeBetween(min_value=1, meta=meta),
        "present": lambda: gxe.ExpectColumnValuesToNotBeNull(**column, meta=meta),
        "unique": lambda: gxe.ExpectColumnValuesToBeUnique(**column, meta=meta),
        "unit_interval": lambda: gxe.ExpectColumnValuesToBeBetween(
            **column, min_value=0.0, max_value=1.0, meta=meta
        ),
        "mean_at_least": lambda: gxe.ExpectColumnMeanToBeBetween(
            **column, min_value=threshold - FLOAT_SLACK, meta=meta
        ),
        "min_at_least": lambda: gxe.ExpectColumnMinToBeBetween(
            **column, min_value=threshold - FLOAT_SLACK, meta=meta
        ),
        "max_at_most": lambda: gxe.ExpectColumnMaxToBeBetween(
            **column, max_value=threshold + FLOAT_SLACK, meta=meta
        ),
    }
    return built[check.kind]()


def _outcome(
    check: _Check, result: Any, threshold: float | None, record_ids: list[str], summary: dict[str, Any]
) -> ExpectationOutcome:
    passed = bool(result.success)
    if check.kind in ("present", "unique", "unit_interval"):
        rows = failing_indices(result) if not passed else []
        problem = {"present": "missing", "unique": "repeated", "unit_interval": "outside [0, 1]"}[check.kind]
        named = sorted({record_ids[row] for row in rows})
        listed = ", ".join(named[:_MAX_LISTED_IDS]) + (" ..." if len(named) > _MAX_LISTED_IDS else "")
        reason = (
            f"{check.column} {problem} for record(s) {listed}" if rows else f"no {check.column} {problem}"
        )
        return ExpectationOutcome(check.name, passed, float(len(rows)), None, reason)
    observed = result.result.get("observed_value")
    observed = None if observed is None or not math.isfinite(float(observed)) else float(observed)
    if check.kind == "rows":
        reason = "the evaluation table has no rows" if not passed else f"{_number(observed)} edits evaluated"
        return ExpectationOutcome(check.name, passed, observed, 1.0, reason)
    reason = _threshold_reason(check, passed, observed, threshold, summary)
    return ExpectationOutcome(check.name, passed, observed, threshold, reason)


def _threshold_reason(
    check: _Check, passed: bool, observed: float | None, threshold: float | None, summary: dict[str, Any]
) -> str:
    measured = {
        "mean_at_least": f"mean {check.column}",
        "min_at_least": str(check.column),
        "max_at_most": "relative perplexity increase",
    }[check.kind]
    if observed is None:
        if check.kind == "max_at_most":
            before, after = summary["perplexity_before"], summary["perplexity_after"]
            return f"perplexity cannot be compared: before {before!r}, after {after!r}"
        return f"{measured} could not be computed: no values"
    relation = (
        {True: "is within", False: "exceeds"}
        if check.kind == "max_at_most"
        else {True: "meets", False: "is below"}
    )[passed]
    return f"{measured} {_number(observed)} {relation} the threshold {_number(threshold)}"


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"
