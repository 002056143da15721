"""The editing commands of the CLI on the tiny model: train-editor, eval and edit with each editor."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from editing.data.records import EditRecord, PromptAnswer, write_jsonl
from tests.paths import DATA_DIR


def test_train_editor_then_eval_and_edit_with_mend_and_ft(tiny_base_dir, tmp_path):
    from flows.cli import app

    runner = CliRunner()
    train = DATA_DIR / "counterfact_easyedit_splits" / "counterfact-train.json"
    checkpoint = tmp_path / "editor"
    trained = runner.invoke(app, ["train-editor", "--model", str(tiny_base_dir), "--data", str(train), "--limit", "40",
                                  "--val-records", "8", "--max-steps", "4", "--out", str(checkpoint)])  # fmt: skip
    assert trained.exit_code == 0, trained.output
    assert "checkpoint" in trained.output and (checkpoint / "editor.safetensors").is_file()

    records = write_jsonl([EditRecord("r1", "The capital of France is", "Rome", rephrase_prompts=("France's capital is",),
                                      locality=(PromptAnswer("The capital of Spain is", "Madrid"),))], tmp_path / "r.jsonl")  # fmt: skip
    out = tmp_path / "eval.json"
    evaluated = runner.invoke(app, ["eval", "--model", str(tiny_base_dir), "--editor", "mend", "--editor-path",
                                    str(checkpoint), "--data", str(records), "--out", str(out)])  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.output
    assert "aggregates" in evaluated.output and json.loads(out.read_text())["rows"][0]["record_id"] == "r1"

    edited = runner.invoke(
        app, ["edit", "--model", str(tiny_base_dir), "--editor", "ft", "--records", str(records)]
    )
    assert edited.exit_code == 0, edited.output
    assert "batch edit of 1 record" in edited.output and "Rome" in edited.output


def test_mend_editor_for_another_model_is_refused(tiny_base_dir, tiny_gpt2, tmp_path):
    from flows.cli import app

    runner = CliRunner()
    train = DATA_DIR / "counterfact_easyedit_splits" / "counterfact-train.json"
    checkpoint = tmp_path / "editor"
    gpt2_dir = tmp_path / "gpt2"
    tiny_gpt2.model.save_pretrained(gpt2_dir)
    tiny_gpt2.tokenizer.save_pretrained(gpt2_dir)
    runner.invoke(app, ["train-editor", "--model", str(gpt2_dir), "--data", str(train), "--limit", "20",
                        "--val-records", "4", "--max-steps", "1", "--out", str(checkpoint)])  # fmt: skip
    refused = runner.invoke(app, ["eval", "--model", str(tiny_base_dir), "--editor", "mend", "--editor-path",
                                  str(checkpoint), "--data", str(train), "--limit", "1"])  # fmt: skip
    assert refused.exit_code != 0 and "trained for base model" in str(refused.exception)
