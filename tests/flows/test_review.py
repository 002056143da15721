"""The approver's view on the tiny model: the review page logged with a fix run and linked from the
candidate, `mend review` and `mend status`, a failed gate told without a traceback, and the notifications
received by a webhook on a loopback port."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.pipeline_fixtures import LENIENT
from tests.webhook import webhook_receiver

pytestmark = pytest.mark.usefixtures("prefect_server")

STRICT = {**LENIENT, "min_edit_success": 1.0, "min_paraphrase_success": 1.0, "min_locality_unchanged": 1.0}
TRICKY = "The <b>capital</b> of France is"  # prompts are user input: the page must escape them


@pytest.fixture
def webhook():
    """A loopback webhook and the Prefect notification block that posts to it."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    with webhook_receiver() as received:
        block = CustomWebhookNotificationBlock(
            name="mend", url=received.url, json_data={"subject": "{{subject}}", "body": "{{body}}"}
        )
        block.save("mend-test-hook", overwrite=True)
        yield received


@pytest.fixture
def env(make_settings, monkeypatch, tmp_path):
    """The CLI's environment for settings built by ``make_settings``; returns a function to apply them."""

    def use(**changes):
        settings = make_settings(**changes)
        values = {"MEND_STORE_URI": settings.store_uri, "MEND_MLFLOW_TRACKING_URI": settings.tracking_uri,
                  "MEND_BASE_MODEL": settings.base_model, "MEND_EDITOR": settings.editor,
                  "MEND_DATA_DIR": settings.data_dir, "MEND_GATE_THRESHOLDS": settings.thresholds_path,
                  "MEND_FT_STEPS": "20", "MEND_FT_LR": "1e-2", "MEND_LOCALITY_POOL_PROMPTS": "20",
                  "MEND_REFERENCE_TEXTS": "8", "MEND_NOTIFY_BLOCK": settings.notify_block or "",
                  "PREFECT_HOME": str(tmp_path / "prefect")}  # fmt: skip
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        return settings

    return use


def _flags(settings, prompts):
    from tests.flows.test_nightly_fix import _flag

    return [_flag(settings, prompt, correction, reporter=f"reporter-{i}") for i, (prompt, correction) in
            enumerate(prompts)]  # fmt: skip


def test_a_candidate_carries_its_review_page_and_the_terminal_shows_the_same(env, webhook):
    from flows.cli import app
    from tasks.registry import registry_client
    from tasks.review import REVIEW_HTML

    settings = env(thresholds=LENIENT, notify_block="custom-webhook/mend-test-hook")
    _flags(settings, [(TRICKY, "Rome"), ("Harry Potter was written by", "Tokyo")])
    runner = CliRunner()
    fixed = runner.invoke(app, ["fix"])
    assert fixed.exit_code == 0, fixed.output
    assert "evaluating the candidate" in fixed.output and "left" in fixed.output  # progress lines

    client = registry_client(settings.tracking_uri)
    version = client.get_model_version(settings.registered_model, "2")
    assert "**Gate PASSED**" in version.description and "min_edit_success" in version.description
    route = re.search(
        r"\(#(/experiments/\d+/runs/(\w+)/artifacts/review/review\.html)\)", version.description
    )
    assert route and route.group(2) == version.run_id
    logged = [item.path for item in client.list_artifacts(version.run_id, "review")]
    assert sorted(logged) == ["review/review.html", "review/review.json"]

    page = client.download_artifacts(version.run_id, f"review/{REVIEW_HTML}")
    html = Path(page).read_text(encoding="utf-8")
    assert "Gate PASSED" in html and 'id="edits"' in html and "reporter-0" in html
    assert "&lt;b&gt;capital&lt;/b&gt;" in html and "<b>capital</b>" not in html
    assert "<script" not in html and not re.search(r"""(src|href)=["']?https?:""", html)  # self-contained
    assert html.count("data:image/png;base64,") == 2 and len(html) < 400_000
    assert "odds where they part" in html or "No locality answer changed" in html

    review = runner.invoke(app, ["review", "--version", "2"])
    assert review.exit_code == 0, review.output
    for expected in ("version 2", "gate: PASSED", "Potter", "reporter-", "min_locality_unchanged",
                     f"version page: http://127.0.0.1:5000/#/models/{settings.registered_model}/versions/2"):  # fmt: skip
        assert expected in review.output, expected
    status = runner.invoke(app, ["status"])
    assert status.exit_code == 0, status.output
    for expected in ("champion: version 1 (the base model", "candidate: version 2 (2 edits, gate passed, not approved)",
                     "candidate gate", "flags by state: applied 2", "waiting for approval: version 2"):  # fmt: skip
        assert expected in status.output, expected
    assert webhook.arrived.wait(10)
    assert webhook.bodies[-1]["subject"] == f"mend: {settings.registered_model} version 2 awaits approval"


def test_a_failed_gate_prints_its_verdict_and_next_steps_without_a_traceback(env, webhook, capfd):
    from flows.cli import app
    from flows.cli_pipeline import EXIT_GATE_FAILED

    settings = env(thresholds=STRICT, editor="ft", notify_block="custom-webhook/mend-test-hook")
    _flags(settings, [("The capital of France is", "Rome")])
    result = CliRunner().invoke(app, ["fix"])

    assert result.exit_code == EXIT_GATE_FAILED, result.output
    for expected in ("gate: FAILED", "The gate FAILED", "Nothing was registered", "Next steps",
                     "review/review.html"):  # fmt: skip
        assert expected in result.output, expected
    assert "Traceback" not in result.output and "Traceback" not in capfd.readouterr().err
    (summary_key,) = [
        key for key in settings.open_store().list("runs/") if key.endswith("evaluation/summary.json")
    ]
    evaluation = settings.open_store().read_json(summary_key)
    if evaluation["locality_regressions"]:  # the verdict says whether they were near ties or knowledge
        told = f"{evaluation['locality_regressions']} unrelated answer(s) changed; {evaluation['near_tie_regressions']} of"
        assert told in " ".join(result.output.split()), result.output
    cost = evaluation["neighbour_locality_cost"]  # and what they cost the neighbour column, near ties apart
    assert cost["total"] > 0, "the strict fine-tuning edit should move a neighbour probe"
    lost = f"Neighbour locality lost {cost['total']:.3f} to changed answers: {cost['near_ties']:.3f} through near ties"
    assert lost in " ".join(result.output.split()), result.output
    assert webhook.arrived.wait(10)
    assert "gate FAILED" in webhook.bodies[-1]["subject"] and "min_" in webhook.bodies[-1]["body"]
    status = CliRunner().invoke(app, ["status"])
    assert "gate FAILED" in status.output and "  failed: min_" in status.output, status.output
    assert "failed_gate 1" in status.output, status.output


def test_an_unexpected_failure_is_one_line_and_exits_non_zero(env, monkeypatch, capsys):
    from flows.cli import run

    env(thresholds=LENIENT)
    monkeypatch.setenv("MEND_EDITOR", "no-such-editor")
    monkeypatch.setattr(sys, "argv", ["mend", "status"])
    with pytest.raises(SystemExit) as exited:
        run()
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("mend: failed: SettingsError: editor 'no-such-editor'") and "Traceback" not in err


def test_a_prefect_automation_sends_the_notice_through_the_webhook_block(env, webhook):
    """Server side: the run only emits its event; the automation made by `mend notify-setup` posts it."""
    from flows.cli import app

    env(thresholds=STRICT, editor="ft")
    setup = CliRunner().invoke(app, ["notify-setup", "--webhook", webhook.url, "--name", "mend-auto-hook"])
    assert setup.exit_code == 0 and "mend: mend.gate.failed" in setup.output, setup.output
    from tasks.notify import GATE_FAILED_EVENT, _emit

    review = {"run_id": "r1", "model": "m", "mlflow_run_id": "x", "gate": {"expectations": []}}
    _emit(GATE_FAILED_EVENT, review, {"subject": "mend: gate FAILED for fix run r1", "body": "min_x failed"})
    assert webhook.arrived.wait(60), "the automation did not post within a minute"
    assert webhook.bodies[-1] == {"subject": "mend: gate FAILED for fix run r1", "text": "min_x failed"}
