"""The placebo-night benchmark's pieces that need no fix run: its edits and its table."""

from __future__ import annotations

import json

from benchmarks.gate_noise import markdown, placebo_records
from editing.core.generate import normalise_words
from tests.paths import DATA_DIR


def test_placebo_edits_are_seeded_and_never_name_a_subject_the_run_mentions():
    first = placebo_records(DATA_DIR, 5_000, 20, frozenset(), seed=0)
    assert [r.record_id for r in first] == [
        r.record_id for r in placebo_records(DATA_DIR, 5_000, 20, frozenset(), 0)
    ]
    assert [r.record_id for r in first] != [
        r.record_id for r in placebo_records(DATA_DIR, 5_000, 20, frozenset(), 1)
    ]
    mentioned = frozenset(" ".join(normalise_words(r.subject)) for r in first[:10])
    again = placebo_records(DATA_DIR, 5_000, 20, mentioned, seed=0)
    assert len(again) == 20 and not {" ".join(normalise_words(r.subject)) for r in again} & mentioned


def test_the_table_puts_the_runs_own_night_beside_the_placebos():
    lost = {"total": 0.05, "near_ties": 0.03, "other": 0.02, "largest": []}
    result = {
        "fix_run": "abc", "records": 20, "editor": "models:/mend-editor/1",
        "arguments": {"edits": "20", "first_record": "5000"},
        "own_night": {"neighbour_locality": 0.95, "lost": lost},
        "nights": [{"seed": 0, "edits": ["x"] * 20, "neighbour_locality": 0.97, "changed_answers": 9,
                    "near_tie_answers": 8, "lost": lost}],
    }  # fmt: skip
    table = markdown(result)
    assert "| the run's own edits | 20 | 0.950 | - | 0.030 / 0.020 |" in table
    assert "| placebo 0 | 20 | 0.970 | 9 (8) | 0.030 / 0.020 |" in table


def test_a_result_file_is_written_again_with_its_plot(tmp_path):
    from benchmarks.gate_noise import main

    lost = {"total": 0.05, "near_ties": 0.03, "other": 0.02, "largest": []}
    result = {"fix_run": "abcdef12", "records": 20, "editor": "e", "arguments": {"edits": "20", "first_record": "5000"},
              "own_night": {"neighbour_locality": 0.95, "lost": lost}, "nights": []}  # fmt: skip
    source = tmp_path / "source.json"
    source.write_text(json.dumps(result))
    main(["--tag", "t", "--from-json", str(source), "--out", str(tmp_path)])
    assert json.loads((tmp_path / "gate-noise-t.json").read_text()) == result
    assert (tmp_path / "gate-noise-t.png").stat().st_size > 0
    assert "the run's own edits" in (tmp_path / "gate-noise-t.md").read_text()
