"""What each changed locality probe takes off the gate's locality means (tasks.evaluate.locality_costs)."""

from __future__ import annotations

import copy

import pytest
import torch

from editing.data.records import EditRecord, PromptAnswer
from editing.evaluation.evaluate import evaluate_edit
from tasks.evaluate import (
    NEIGHBOUR_COLUMN,
    SAME_SUBJECT_COLUMN,
    gate_rows,
    locality_costs,
    neighbour_cost_summary,
)


def probe(prompt: str, kind: str = "hard_neighbour") -> PromptAnswer:
    return PromptAnswer(prompt, "Paris", kind)


RECORDS = [
    EditRecord("a", "The capital of France is", "Rome",
               locality=(probe("The capital of Spain is"), probe("Sega makes", "random"),
                         probe("France's currency is", "same_subject"))),
    EditRecord("b", "Harry Potter was written by", "Microsoft",
               locality=(probe("The capital of Italy is"), probe("Rowling's nationality is", "same_subject"))),
    # Only same-subject probes: the gate's locality column falls back to them (gate_rows).
    EditRecord("c", "Toko Yasuda plays the", "piano", locality=(probe("Toko Yasuda was born in", "same_subject"),)),
    EditRecord("d", "The Eiffel Tower is in", "Rome"),  # no probes: in no mean
]  # fmt: skip


def test_costs_divide_by_the_probes_and_records_each_column_counts():
    changes = {"a": [0.5, 0.0, 1.0], "b": [1.0, 0.0], "c": [1.0], "d": []}
    costs = locality_costs(RECORDS, changes)
    # Neighbour column: a (2 neighbour probes), b (1), c (its 1 same-subject probe): 3 records.
    assert costs[("a", 0)][NEIGHBOUR_COLUMN] == pytest.approx(0.5 / 2 / 3)
    assert costs[("b", 0)][NEIGHBOUR_COLUMN] == pytest.approx(1.0 / 1 / 3)
    assert costs[("c", 0)][NEIGHBOUR_COLUMN] == pytest.approx(1.0 / 1 / 3)
    # Same-subject column: a, b, c, one probe each; an unchanged probe costs nothing and is left out.
    assert costs[("a", 2)] == {SAME_SUBJECT_COLUMN: pytest.approx(1.0 / 3)}
    assert costs[("c", 0)][SAME_SUBJECT_COLUMN] == pytest.approx(1.0 / 3)
    assert ("a", 1) not in costs and ("b", 1) not in costs


def test_costs_add_up_to_what_the_gate_observes(tiny_model):
    """On a real edit of a tiny model: per column, one minus the gate rows' mean is the sum of the costs."""
    model, tokenizer = tiny_model.model, tiny_model.tokenizer
    edited = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, parameter in edited.named_parameters():
            if ".mlp." in name:
                parameter.add_(2.0 * torch.randn(parameter.shape, generator=generator))
    evaluation = evaluate_edit(model, edited, tokenizer, RECORDS)
    rows = gate_rows(evaluation.rows)
    costs = locality_costs(RECORDS, evaluation.probe_changes)
    assert costs, "the noise should change some probe"
    for column in (NEIGHBOUR_COLUMN, SAME_SUBJECT_COLUMN):
        observed = [row[column] for row in rows if row[column] is not None]
        lost = sum(cost.get(column, 0.0) for cost in costs.values())
        assert lost == pytest.approx(1 - sum(observed) / len(observed))


def test_the_summary_splits_near_ties_from_the_rest():
    costs = {("a", 0): {NEIGHBOUR_COLUMN: 0.02}, ("b", 0): {NEIGHBOUR_COLUMN: 0.01},
             ("a", 2): {SAME_SUBJECT_COLUMN: 0.3}}  # fmt: skip
    regressions = [
        {"prompt": "The capital of Spain is", "kind": "hard_neighbour", "before": "Madrid", "after": "Rome",
         "champion_odds": "1.1", "near_tie": "yes", "gate_cost": 0.02},
        {"prompt": "The capital of Italy is", "kind": "random", "before": "Rome", "after": "Milan",
         "champion_odds": "40", "near_tie": "no", "gate_cost": 0.01},
        {"prompt": "France's currency is", "kind": "same_subject", "before": "the euro", "after": "the lira",
         "champion_odds": "1.2", "near_tie": "yes", "gate_cost": 0.3},
        {"prompt": "Sega makes", "kind": "random", "before": "games.", "after": "games for",
         "champion_odds": "", "near_tie": "", "gate_cost": 0.0},
    ]  # fmt: skip
    summary = neighbour_cost_summary(regressions, costs)
    assert summary["total"] == pytest.approx(0.03)
    assert summary["near_ties"] == pytest.approx(0.02) and summary["other"] == pytest.approx(0.01)
    assert [item["prompt"] for item in summary["largest"]] == [
        "The capital of Spain is",
        "The capital of Italy is",
    ]
    # One pool prompt beside two edits is one change, its costs summed; rounded row costs never make the
    # near ties exceed the total.
    twice = [regressions[1], {**regressions[1], "edit": "c"}]
    costs = {("b", 0): {NEIGHBOUR_COLUMN: 0.01}, ("c", 0): {NEIGHBOUR_COLUMN: 0.01}}
    (change,) = neighbour_cost_summary(twice, costs)["largest"]
    assert change["gate_cost"] == pytest.approx(0.02) and change["edits"] == 2
    tipped = [{**regressions[0], "gate_cost": 0.00417}, {**regressions[0], "gate_cost": 0.00417}]
    exact = {("a", 0): {NEIGHBOUR_COLUMN: 0.0041666}, ("b", 0): {NEIGHBOUR_COLUMN: 0.0041666}}
    split = neighbour_cost_summary(tipped, exact)
    assert split["near_ties"] == split["total"] and split["other"] == 0.0


def test_the_review_lists_the_costliest_changes_first_and_shows_the_near_tie_share(tmp_path):
    from tasks.review import _regressions
    from tasks.review_html import _cards
    from tasks.review_html import _regressions as regressions_table
    from tasks.storage import open_store

    store = open_store(tmp_path)
    store.write_text(
        "evaluation/locality_regressions.csv",
        "edit,prompt,kind,before,after,champion_odds,near_tie,gate_cost\n"
        "a,Sega makes,random,games.,games for,,,0.0\n"
        "a,The capital of Spain is,hard_neighbour,Madrid,Rome,1.1,yes,0.0083\n"
        "b,The largest planet is,hard_neighbour,Jupiter,Mercury,4.8,no,0.0125\n",
    )
    rows = _regressions(store, "evaluation/locality_regressions.csv")
    assert [row["prompt"] for row in rows] == [
        "The largest planet is",
        "The capital of Spain is",
        "Sega makes",
    ]
    table = regressions_table({"regressions": rows})
    assert "taken off the gate's locality mean" in table and "<td>0.0125</td>" in table
    assert "<td>0</td>" in table  # a change past the answer the gate scores costs it nothing
    cards = _cards({"neighbour_locality_cost": {"total": 0.055, "near_ties": 0.03, "other": 0.025}})
    assert "neighbour locality lost to changed answers<b>0.055</b>" in cards
    assert "of it through near ties<b>0.030</b>" in cards
    assert "lost to changed answers" not in _cards({})  # a run evaluated before the split has no such card
