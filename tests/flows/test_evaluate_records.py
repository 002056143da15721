"""A large evaluation spread over a local Dask cluster of two worker processes gives the rows and the
aggregates of the sequential evaluation."""

from __future__ import annotations

import pytest

from tasks.evaluate_spread import EvaluationSpec, EvaluationSpecError
from tests.paths import DATA_DIR

pytestmark = pytest.mark.usefixtures("prefect_server")
COUNTERFACT_VAL = DATA_DIR / "counterfact_easyedit_splits/counterfact-val.json"


def _sequential(spec: EvaluationSpec):
    from editing.core.models import load_model
    from editing.data.records import read_records
    from editing.editors import build_editor
    from editing.evaluation.evaluate import run_single_edits

    loaded = load_model(spec.model)
    records = read_records(COUNTERFACT_VAL, limit=spec.limit, offset=spec.offset).records
    editor = build_editor(spec.editor, loaded)
    return run_single_edits(editor, loaded.model, loaded.tokenizer, records)


def _assert_same_rows(spread, sequential):
    for row, expected in zip(spread, sequential, strict=True):
        assert row.keys() == expected.keys()
        for name, value in expected.items():
            if name == "edit_seconds":  # wall time
                continue
            if isinstance(value, float):
                assert row[name] == pytest.approx(value, rel=1e-6), (row["record_id"], name)
            else:
                assert row[name] == value, (row["record_id"], name)


def test_dask_workers_give_the_sequential_evaluation(tiny_base_dir):
    from flows.evaluate_records import evaluate_records

    # Three chunks of 16 (the scoring batch) over two worker processes, starting past the first record.
    spec = EvaluationSpec(str(COUNTERFACT_VAL), editor="ft", model=str(tiny_base_dir), limit=40, offset=3,
                          chunk_size=16)  # fmt: skip
    assert spec.chunks() == [(3, 16), (19, 16), (35, 8)]
    spread = evaluate_records(spec, workers=2)
    sequential = _sequential(spec)
    assert [row["record_id"] for row in spread.rows] == [row["record_id"] for row in sequential.rows]
    _assert_same_rows(spread.rows, sequential.rows)
    assert spread.aggregates.keys() == sequential.aggregates.keys()
    for name, value in sequential.aggregates.items():  # None where no record has the column
        if name == "edit_seconds":  # wall time
            continue
        assert spread.aggregates[name] == (value if value is None else pytest.approx(value, rel=1e-6)), name
    assert spread.aggregates["records"] == 40


def test_an_invalid_request_names_its_field(tmp_path):
    with pytest.raises(EvaluationSpecError, match="chunk_size"):
        EvaluationSpec(str(COUNTERFACT_VAL), chunk_size=0)
    with pytest.raises(EvaluationSpecError, match=r"data: .*missing.json is not a file"):
        EvaluationSpec(str(tmp_path / "missing.json"))


def test_mend_eval_with_workers_prints_and_writes_the_sequential_rows(tiny_base_dir, tmp_path):
    """The command line's way in (``mend eval --workers 2``) gives what ``mend eval`` gives in one process."""
    import json

    from typer.testing import CliRunner

    from flows.cli import app

    runner, outputs = CliRunner(), {}
    for workers in (1, 2):
        out = tmp_path / f"eval-{workers}.json"
        result = runner.invoke(app, ["eval", "--data", str(COUNTERFACT_VAL), "--model", str(tiny_base_dir),
                                     "--editor", "ft", "--limit", "20", "--offset", "5", "--workers", str(workers),
                                     "--out", str(out)])  # fmt: skip
        assert result.exit_code == 0, result.output
        assert "ft: 20 single edits from counterfact-val.json" in result.output
        outputs[workers] = json.loads(out.read_text())
    record_ids = {
        workers: [row["record_id"] for row in output["rows"]] for workers, output in outputs.items()
    }
    assert record_ids[2] == record_ids[1] and len(record_ids[1]) == 20
    _assert_same_rows(outputs[2]["rows"], outputs[1]["rows"])
