"""The command line end to end on the tiny model: flag, the demo summary (what `make run` prints), status."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tests.pipeline_fixtures import LENIENT

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.fixture
def cli_env(make_settings, monkeypatch, tmp_path):
    """Settings exported as the environment the CLI reads, plus a small fact file for the demo."""
    settings = make_settings(thresholds=LENIENT)
    facts = tmp_path / "facts.jsonl"
    facts.write_text("".join(json.dumps(fact) + "\n" for fact in [
        {"id": "f1", "prompt": "The capital of France is", "answer": "Paris", "subject": "France",
         "paraphrase": "France's capital city is"},
        {"id": "f2", "prompt": "Harry Potter was written by", "answer": "J. K. Rowling",
         "subject": "Harry Potter", "paraphrase": "The author of Harry Potter is"},
    ]))  # fmt: skip
    environment = {
        "MEND_STORE_URI": settings.store_uri, "MEND_MLFLOW_TRACKING_URI": settings.tracking_uri,
        "MEND_BASE_MODEL": settings.base_model, "MEND_EDITOR": "ft-kl", "MEND_DATA_DIR": settings.data_dir,
        "MEND_GATE_THRESHOLDS": settings.thresholds_path, "MEND_FT_STEPS": "20", "MEND_FT_LR": "1e-2",
        "MEND_LOCALITY_POOL_PROMPTS": "20", "MEND_REFERENCE_TEXTS": "8", "MEND_DEMO_FACTS": str(facts),
        "PREFECT_HOME": str(tmp_path / "prefect"),  # the CLI would otherwise set it for the whole session
    }  # fmt: skip
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    return settings


def test_demo_prints_the_summary_and_a_second_run_finds_no_new_flags(cli_env):
    from flows.cli import app

    runner = CliRunner()
    first = runner.invoke(app, ["demo"])
    assert first.exit_code == 0, first.output
    for expected in ("asked 2 questions, flagged 2 wrong answers", "flags: read 2", "accepted 2",
                     "edits applied: 2", "gate: PASSED", "min_edit_success", "registered", "version 2",
                     "mend promote --version 2", "mlflow ui --backend-store-uri"):  # fmt: skip
        assert expected in first.output, expected
    second = runner.invoke(app, ["demo"])
    assert second.exit_code == 0, second.output
    assert "already seeded" in second.output and "no new flags" in second.output


def test_night_two_waits_for_night_one_to_be_promoted_then_keeps_its_edits(cli_env, tmp_path, monkeypatch):
    from flows.cli import app

    night2 = tmp_path / "night2.jsonl"
    night2.write_text(json.dumps({"id": "n1", "prompt": "The Mona Lisa was painted by", "answer": "Leonardo da Vinci",
                                  "subject": "The Mona Lisa", "paraphrase": "The painter of the Mona Lisa was"}) + "\n")  # fmt: skip
    monkeypatch.setenv("MEND_DEMO_FACTS_NIGHT2", str(night2))
    runner = CliRunner()
    early = runner.invoke(app, ["demo", "--night", "2"])
    assert early.exit_code == 2 and "make run" in early.output, early.output
    assert runner.invoke(app, ["demo"]).exit_code == 0
    waiting = runner.invoke(app, ["demo", "--night", "2"])
    assert waiting.exit_code == 2 and "mend promote --version 2 --approve" in waiting.output, waiting.output
    promoted = runner.invoke(app, ["promote", "--version", "2", "--approve", "--approver", "alice"])
    assert promoted.exit_code == 0, promoted.output
    second = runner.invoke(app, ["demo", "--night", "2"])
    assert second.exit_code == 0, second.output
    assert "asked 1 questions" in second.output and "min_retention" in second.output, second.output
    assert "version 3" in second.output


def test_flag_command_appends_a_flag_that_the_next_fix_applies(cli_env):
    from flows.cli import app
    from tasks.flags import read_flag_log
    from tasks.storage import open_store

    runner = CliRunner()
    result = runner.invoke(app, ["flag", "--prompt", "The capital of France is", "--correction", "Rome",
                                 "--prediction", "Paris", "--paraphrase", "France's capital city is"])  # fmt: skip
    assert result.exit_code == 0, result.output
    (flag,) = read_flag_log(open_store(cli_env.store_uri)).flags
    assert flag.correction == "Rome" and flag.paraphrases == ("France's capital city is",)
    fixed = runner.invoke(app, ["fix"])
    assert fixed.exit_code == 0 and "gate: PASSED" in fixed.output, fixed.output
    status = runner.invoke(app, ["status"])
    assert "applied 1" in status.output
