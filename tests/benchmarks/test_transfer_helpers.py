"""The transfer benchmark's helpers: relations held out, cells summarised, the report written."""

from __future__ import annotations

import pytest

from benchmarks.transfer import batches, held_out_relations, split_by_relation, summarise
from benchmarks.transfer_report import cell_text, heat_grid, markdown, write_transfer
from editing.data.records import EditRecord


def test_a_seeded_fifth_of_the_relations_is_held_out_and_split_off():
    labels = [f"relation-{i % 10}" for i in range(40)]
    held = held_out_relations(labels, 0.2, seed=1)
    assert len(held) == 2 and held == held_out_relations(labels, 0.2, seed=1)
    assert held_out_relations(["only"], 0.2, seed=0) == {"only"}  # at least one
    records = [EditRecord(f"r{i}", "p", "t") for i in range(40)]
    kept, out = split_by_relation(records, labels, held)
    assert len(kept) == 32 and len(out) == 8
    assert all(labels[int(r.record_id[1:])] in held for r in out)
    assert not {r.record_id for r in kept} & {r.record_id for r in out}


def test_a_cell_summarises_each_metric_over_the_edits_that_have_it():
    rows = [
        {"rewrite_acc": 1.0, "rephrase_acc": 0.5, "locality_neighbour": 1.0, "locality_same_subject": None},
        {"rewrite_acc": 0.0, "rephrase_acc": 0.5, "locality_neighbour": 0.5, "locality_same_subject": 1.0},
    ]
    cell = summarise(rows, train_data="counterfact", eval_data="zsre", mode="single", edits=1, seconds=3.0)
    assert cell["rewrite"] == 0.5 and cell["rewrite_n"] == 2
    assert cell["rewrite_ci95"][0] == 0.0 and cell["rewrite_ci95"][1] == 1.0  # clipped
    assert cell["locality_same_subject"] == 1.0 and cell["locality_same_subject_n"] == 1
    assert cell["portability"] is None and cell["portability_ci95"] == [None, None]
    assert cell["train_data"] == "counterfact" and cell["edits"] == 1


def test_batches_are_disjoint_and_full():
    records = list(range(40))
    assert batches(records, 16, 8) == [list(range(16)), list(range(16, 32))]
    assert batches(records, 16, 1) == [list(range(16))]


def _result() -> dict:
    row = {"train_data": "counterfact", "eval_data": "zsre", "mode": "single", "edits": 1, "seconds": 12.0,
           "rewrite": 0.9, "rewrite_ci95": [0.8, 1.0], "rephrase": 0.7, "rephrase_ci95": [0.6, 0.8],
           "locality_neighbour": 0.95, "locality_neighbour_ci95": [0.9, 1.0], "locality_same_subject": None,
           "portability": 0.3, "portability_ci95": [0.2, 0.4]}  # fmt: skip
    other = {
        **row,
        "eval_data": "knowedit",
        "locality_same_subject": 0.8,
        "locality_same_subject_ci95": [0.7, 0.9],
    }
    return {"device": "cpu", "date": "today", "rows": [row, other], "held_out_relations": ["relation-3"],
            "evaluation_records": {"zsre": 10, "knowedit": 10}}  # fmt: skip


def test_report_shows_means_intervals_and_dashes_and_writes_a_heat_map(tmp_path):
    result = _result()
    assert cell_text(result["rows"][0], "rewrite") == "0.90 [0.80, 1.00]"
    assert cell_text(result["rows"][0], "locality_same_subject") == "-"
    text = markdown(result)
    assert "| counterfact | zsre | single | 1 | 0.90 [0.80, 1.00] |" in text and "relation-3" in text
    trains, evals, values = heat_grid(result["rows"], "locality_same_subject", "single")
    assert trains == ["counterfact"] and evals == ["zsre", "knowedit"] and values == [[None, 0.8]]
    markdown_path, png = write_transfer(result, tmp_path, "test")
    assert markdown_path.read_text() == text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("mode", ["batch"])
def test_heat_grid_of_a_missing_mode_is_empty(mode):
    assert heat_grid(_result()["rows"], "rewrite", mode) == ([], [], [])


def test_an_editor_of_the_fix_run_recipe_trains_with_its_general_texts(tiny_llama, tmp_path):
    """The recipe's general-text KL needs texts: train_mix once failed without them. An editor is reused
    only for the settings it was trained with."""
    from argparse import Namespace

    import pytest

    from benchmarks.editors import TRAIN_FILE, RecipeMismatch
    from benchmarks.transfer import train_mix
    from editing.data.records import read_records
    from tests.paths import DATA_DIR

    args = Namespace(data_dir=DATA_DIR, work=tmp_path, device="cpu", train_minutes=5.0, max_steps=2, seed=0,
                     generated_examples=10, locality_weight=10.0, same_subject_weight=1.0,
                     lr_schedule="cosine")  # fmt: skip
    records = read_records(DATA_DIR / TRAIN_FILE, limit=120).records
    summary = train_mix(tiny_llama, args, "counterfact", records, "tiny")
    assert summary["step"] == 2 and summary["train_records"] == 20
    assert summary["recipe"]["max_steps"] == 2 and summary["recipe"]["training_mix"] == "counterfact"
    assert summary["recipe"]["lr_schedule"] == "cosine"
    assert (tmp_path / "tiny" / "editor.json").is_file()
    reused = train_mix(tiny_llama, args, "counterfact", records, "tiny")
    assert reused == {"reused": str(tmp_path / "tiny"), "recipe": summary["recipe"]}
    with pytest.raises(RecipeMismatch, match="max_steps"):  # a 2-step editor is not a 3-step one
        train_mix(tiny_llama, Namespace(**{**vars(args), "max_steps": 3}), "counterfact", records, "tiny")
    with pytest.raises(RecipeMismatch, match="same_subject_weight"):
        train_mix(tiny_llama, Namespace(**{**vars(args), "same_subject_weight": 0.0}), "counterfact",
                  records, "tiny")  # fmt: skip
    with pytest.raises(RecipeMismatch, match="lr_schedule"):  # a decayed editor is not a constant-rate one
        train_mix(tiny_llama, Namespace(**{**vars(args), "lr_schedule": "constant"}), "counterfact",
                  records, "tiny")  # fmt: skip


def test_equal_step_editors_are_kept_apart_from_time_budgeted_ones():
    from argparse import Namespace

    from benchmarks.transfer import NO_STEP_LIMIT, editor_name

    assert editor_name("counterfact", Namespace(max_steps=NO_STEP_LIMIT)) == "transfer-counterfact"
    assert editor_name("counterfact", Namespace(max_steps=540)) == "transfer-counterfact-540-steps"


def test_benchmark_editors_are_named_by_recipe_and_an_unknown_name_is_refused(capsys):
    from benchmarks.transfer import _arguments

    assert _arguments(["--recipes", "mend-ls-cosine-60,mend-ls"]).recipes == "mend-ls-cosine-60,mend-ls"
    with pytest.raises(SystemExit):
        _arguments(["--recipes", "mend-ls,no-such-editor"])
    assert "no recipe named no-such-editor" in capsys.readouterr().err
