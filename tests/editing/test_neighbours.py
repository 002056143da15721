"""Neighbour protection: each edit's nearest known facts ride along as zero-shift rows of the solve."""

from __future__ import annotations

import pytest
import torch

from editing.core.generate import greedy_complete
from editing.data.records import EditRecord, PromptAnswer
from editing.mend.aggregation import Aggregation
from editing.mend.neighbours import NeighbourBank, NeighbourBankError, NeighbourSettings, build_neighbour_bank
from editing.mend.rows import concat_rows
from tests.editing.test_aggregation import RECORDS, _ls_editor

PROMPTS = [
    "The capital of Italy is",
    "The capital of Spain is",
    "The capital of France and of its people is",
    "Harry Potter was written by",
    "The mother tongue of Danielle Darrieux is",
    "Paris is a city in",
]


def _bank(loaded) -> NeighbourBank:
    """Facts the tiny model 'knows': its own greedy answers (a random model knows no real fact)."""
    answers = greedy_complete(loaded.model, loaded.tokenizer, PROMPTS, max_new_tokens=2)
    facts = [PromptAnswer(p, a.strip() or "x", "test") for p, a in zip(PROMPTS, answers, strict=True)]
    return build_neighbour_bank(
        loaded.model, loaded.tokenizer, _ls_editor(loaded).scope, loaded.fingerprint, facts
    )


def test_the_bank_keeps_known_facts_with_keys_and_round_trips(tiny_llama, tmp_path):
    bank = _bank(tiny_llama)
    assert 0 < len(bank.facts) <= len(PROMPTS) and bank.embeddings.shape[0] == len(bank.facts)
    assert set(bank.row_fact.tolist()) == set(range(len(bank.facts)))  # every kept fact has rows
    bank.save(tmp_path)
    loaded = NeighbourBank.load(tmp_path, base_fingerprint=tiny_llama.fingerprint)
    assert loaded.facts == bank.facts and torch.equal(loaded.row_fact, bank.row_fact)
    for name, keys in bank.keys.items():
        torch.testing.assert_close(loaded.keys[name], keys)
    with pytest.raises(NeighbourBankError, match="another base model"):
        NeighbourBank.load(tmp_path, base_fingerprint="other")


def test_a_fact_naming_the_edited_subject_is_never_its_neighbour(tiny_llama):
    bank = _bank(tiny_llama)
    france = next(i for i, fact in enumerate(bank.facts) if "France" in fact.prompt)
    nearest = bank.nearest(bank.embeddings[france], "France", len(bank.facts))
    assert france not in nearest and len(nearest) == len(bank.facts) - sum(
        "France" in f.prompt for f in bank.facts
    )


def test_protected_neighbours_barely_move_while_the_edit_still_moves(tiny_llama):
    editor = _ls_editor(tiny_llama)
    bank = _bank(tiny_llama)
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    records = [EditRecord("a", "The capital of France is", "Rome", subject="France")]
    guarded = editor.with_neighbours(bank, NeighbourSettings(per_edit=3, weight=1e6))
    plain_rows = editor.edit_rows(model, tokenizer, records)
    guarded_rows = guarded.edit_rows(model, tokenizer, records)
    assert guarded_rows.row_record.shape[0] > plain_rows.row_record.shape[0]
    plain, solved = editor.aggregate(plain_rows), guarded.aggregate(guarded_rows)
    for name in solved.deltas:
        extra = guarded_rows.keys[name][plain_rows.row_record.shape[0] :].double()  # the neighbour rows
        moved = {
            label: float((result.deltas[name].double() @ extra.T if result.deltas[name].shape[1] == extra.shape[1]
                          else extra @ result.deltas[name].double()).norm())
            for label, result in (("plain", plain), ("guarded", solved))
        }  # fmt: skip
        assert moved["guarded"] < 0.05 * moved["plain"], name
        assert float(solved.deltas[name].norm()) > 0.0
    # The zero-shift rows add nothing to the paper's sum.
    summed = guarded.aggregate(guarded_rows, aggregation=Aggregation.SUM)
    for name, delta in editor.aggregate(plain_rows, aggregation=Aggregation.SUM).deltas.items():
        torch.testing.assert_close(summed.deltas[name], delta)


def test_neighbour_rows_belong_to_their_edit_so_a_rollback_drops_them(tiny_llama):
    guarded = _ls_editor(tiny_llama).with_neighbours(_bank(tiny_llama), NeighbourSettings(per_edit=2))
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    rows = concat_rows([guarded.edit_rows(model, tokenizer, [record]) for record in RECORDS])
    without_b = guarded.aggregate(rows.select(["a", "c"]))
    expected = guarded.edit(model, tokenizer, [RECORDS[0], RECORDS[2]])
    for name, delta in expected.deltas.items():
        torch.testing.assert_close(without_b.deltas[name], delta, rtol=1e-5, atol=1e-7)


def test_neighbour_settings_are_validated():
    with pytest.raises(ValueError, match="per_edit"):
        NeighbourSettings(per_edit=-1)
    with pytest.raises(ValueError, match="weight"):
        NeighbourSettings(per_edit=1, weight=float("nan"))


def test_a_bank_without_some_prompts_drops_their_facts_and_rows(tiny_llama):
    bank = _bank(tiny_llama)
    dropped = bank.facts[0].prompt
    smaller = bank.without([dropped.upper()])  # matched as the gate matches: case and spacing ignored
    assert (
        dropped not in {fact.prompt for fact in smaller.facts} and len(smaller.facts) == len(bank.facts) - 1
    )
    assert set(smaller.row_fact.tolist()) == set(range(len(smaller.facts)))
    kept_rows = bank.row_fact != 0
    for name, keys in smaller.keys.items():
        torch.testing.assert_close(keys, bank.keys[name][kept_rows])
    assert bank.without(["no such prompt"]) is bank
