"""Great Expectations plumbing shared by the suites: validate a pandas frame, read results, render pages.

GX takes about 5 s to import, so nothing here imports it at module import time: the CLI loads this
package for commands that never validate anything. An ephemeral context costs about 10 ms, so every
validation builds its own (no process-wide cache, no state shared between calls); running a suite of a
dozen expectations over a few hundred rows takes about 0.1 s once GX is imported.

Results leave as strict JSON (non-finite floats become ``null``) so they can be logged to MLflow or
stored in PostgreSQL as they are.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from great_expectations.core.expectation_validation_result import (
        ExpectationSuiteValidationResult,
        ExpectationValidationResult,
    )
    from great_expectations.expectations.expectation import Expectation
    from great_expectations.render import RenderedSectionContent

LOGGER = logging.getLogger(__name__)

# Every expectation a suite builds carries ``meta={NAME_KEY: ..., REASON_KEY: ...}``: the name is how the
# suites find their results again (GX does not keep suite order), the reason is why the expectation exists.
NAME_KEY = "name"
REASON_KEY = "reason"


class ExpectationEvaluationError(RuntimeError):
    """GX raised while computing an expectation: a bug or a schema problem, never a verdict on the data."""


def load_gx() -> ModuleType:
    """Import Great Expectations with its analytics off (the variable is read at import time)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations

    return great_expectations


def validate_frame(
    frame: pd.DataFrame, *, suite_name: str, expectations: Sequence[Expectation]
) -> ExpectationSuiteValidationResult:
    """Run ``expectations`` over the whole of ``frame`` in a fresh ephemeral context.

    Results use the COMPLETE format so that row-level expectations list every failing index of ``frame``.
    Raises ``ExpectationEvaluationError`` if GX could not evaluate an expectation.
    """
    gx = load_gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    # tqdm bars on stderr would flood task logs; results are logged below instead.
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    asset = context.data_sources.add_pandas(suite_name).add_dataframe_asset(suite_name)
    batch_definition = asset.add_batch_definition_whole_dataframe("whole frame")
    suite = context.suites.add(gx.ExpectationSuite(name=suite_name, expectations=list(expectations)))
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=suite_name, data=batch_definition, suite=suite)
    )
    started = time.perf_counter()
    result = definition.run(
        batch_parameters={"dataframe": frame}, result_format={"result_format": "COMPLETE"}
    )
    LOGGER.info(
        "suite %s on %d rows: %s (%d/%d expectations met) in %.2f s",
        suite_name,
        len(frame),
        "passed" if result.success else "failed",
        result.statistics["successful_expectations"],
        result.statistics["evaluated_expectations"],
        time.perf_counter() - started,
    )
    _raise_on_evaluation_errors(result)
    return result


def expectation_name(result: ExpectationValidationResult) -> str:
    config = result.expectation_config
    meta = (config.meta if config is not None else None) or {}
    if NAME_KEY not in meta:
        raise ExpectationEvaluationError(f"expectation result without meta[{NAME_KEY!r}]: {config}")
    return str(meta[NAME_KEY])


def results_by_name(result: ExpectationSuiteValidationResult) -> dict[str, ExpectationValidationResult]:
    """Index a suite's results by the name each expectation carries in its meta."""
    indexed: dict[str, ExpectationValidationResult] = {}
    for item in result.results:
        name = expectation_name(item)
        if name in indexed:
            raise ExpectationEvaluationError(f"two expectations in suite {result.suite_name} named {name!r}")
        indexed[name] = item
    return indexed


def failing_indices(result: ExpectationValidationResult) -> list[Any]:
    """Index labels of the rows a failed row-level expectation rejected (COMPLETE result format)."""
    indices = result.result.get("unexpected_index_list")
    if indices is None:
        raise ExpectationEvaluationError(
            f"expectation {expectation_name(result)} failed without listing its rows; "
            "only row-level expectations can be mapped back to rows"
        )
    return list(indices)


def merge_results(
    results: Iterable[ExpectationSuiteValidationResult], *, suite_name: str
) -> ExpectationSuiteValidationResult:
    """One GX result holding the expectations of several batches (a table and its summary, say).

    Each batch's own meta is kept under ``meta["batches"]`` keyed by its suite name.
    """
    load_gx()
    from great_expectations.core.expectation_validation_result import ExpectationSuiteValidationResult
    from great_expectations.validator.validation_statistics import calc_validation_statistics

    parts = list(results)
    merged = [item for part in parts for item in part.results]
    statistics = calc_validation_statistics(merged)
    first_meta = dict(parts[0].meta) if parts else {}
    meta = {
        key: first_meta[key]
        for key in ("great_expectations_version", "run_id", "validation_time")
        if key in first_meta
    }
    meta["batches"] = {part.suite_name: dict(part.meta) for part in parts}
    return ExpectationSuiteValidationResult(
        success=statistics.success,
        results=merged,
        suite_name=suite_name,
        statistics={
            "evaluated_expectations": statistics.evaluated_expectations,
            "successful_expectations": statistics.successful_expectations,
            "unsuccessful_expectations": statistics.unsuccessful_expectations,
            "success_percent": statistics.success_percent,
        },
        meta=meta,
    )


def strict_json(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by ``None``, so ``json.dumps(allow_nan=False)`` works."""
    if type(value).__module__ == "numpy" and hasattr(value, "item"):
        value = value.item()  # numpy scalars: plain Python numbers and bools serialise everywhere
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(key): strict_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(item) for item in value]
    return value


def result_to_json(result: ExpectationSuiteValidationResult) -> dict[str, Any]:
    """The GX validation result as a strict-JSON dict (round-trips through ``json.dumps``)."""
    as_json = strict_json(result.to_json_dict())
    json.dumps(as_json, allow_nan=False)  # fail here, not in whoever stores it later
    return as_json


def render_validation_page(
    result_json: dict[str, Any], *, extra_sections: Sequence[RenderedSectionContent] = ()
) -> str:
    """A static HTML Data Docs page for a validation result, drawn by GX's own renderer.

    ``extra_sections`` go right after GX's overview. The page links its styles from public CDNs, so it is
    plain (but complete) when opened offline.
    """
    load_gx()
    from great_expectations.core.expectation_validation_result import (
        ExpectationSuiteValidationResultSchema,
    )
    from great_expectations.render.renderer import ValidationResultsPageRenderer
    from great_expectations.render.view import DefaultJinjaPageView

    result = ExpectationSuiteValidationResultSchema().load(result_json)
    document = ValidationResultsPageRenderer().render(result)
    document.sections[1:1] = list(extra_sections)
    return DefaultJinjaPageView().render(document)


def table_section(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> RenderedSectionContent:
    """A Data Docs section holding one titled table, built from GX's rendering components."""
    load_gx()
    from great_expectations.render import (
        RenderedHeaderContent,
        RenderedSectionContent,
        RenderedStringTemplateContent,
        RenderedTableContent,
    )

    heading = RenderedHeaderContent(
        header=RenderedStringTemplateContent(
            content_block_type="string_template",
            string_template={"template": title, "tag": "h5", "styling": {"classes": ["m-0"]}},
        ),
        styling={"classes": ["col-12", "p-0"], "header": {"classes": ["alert", "alert-secondary"]}},
    )
    table = RenderedTableContent(
        content_block_type="table",
        header_row=[str(cell) for cell in header],
        table=[[str(cell) for cell in row] for row in rows],
        styling={"classes": ["col-12", "table-responsive"], "body": {"classes": ["table", "table-sm"]}},
    )
    return RenderedSectionContent(section_name=title, content_blocks=[heading, table])


def _raise_on_evaluation_errors(result: ExpectationSuiteValidationResult) -> None:
    for item in result.results:
        info = item.exception_info or {}
        # GX reports one exception as a flat dict, several as a dict keyed by metric id.
        reports = [info] if "raised_exception" in info else [report for report in info.values() if report]
        for report in reports:
            if isinstance(report, dict) and report.get("raised_exception"):
                raise ExpectationEvaluationError(
                    f"suite {result.suite_name}: expectation {expectation_name(item)} could not be "
                    f"evaluated: {report.get('exception_message')}"
                )
