"""Same-wording neighbours: an edit's own prompt about similar subjects, held in place by the solve."""

from __future__ import annotations

import pytest
import torch

from editing.data.records import EditRecord
from editing.mend.neighbours import NeighbourSettings
from editing.mend.substitutes import (
    SUBJECT_FREE_FILLERS,
    SubjectPool,
    SubjectPoolError,
    build_subject_pool,
    subject_free_facts,
    substitute_facts,
    template_of,
)
from tests.editing.test_aggregation import _ls_editor

SUBJECTS = ["Spain", "Italy", "Portugal", "Egypt", "Côte d'Ivoire", "Danielle Darrieux", "Iran", "spain"]
IRAN = EditRecord("iran", "The official language of Iran is", "Arabic", subject="Iran")
EGYPT = EditRecord("egypt", "the official language of egypt is", "French", subject="Egypt")


def _pool(loaded) -> SubjectPool:
    return build_subject_pool(loaded.model, loaded.tokenizer, SUBJECTS, loaded.fingerprint)


def _moved(update: torch.Tensor, keys: torch.Tensor) -> float:
    """How far ``update`` moves the layer outputs at ``keys`` (rows, d_in), whichever way it is stored."""
    update = update.double()
    return float((update @ keys.T if update.shape[1] == keys.shape[1] else keys @ update).norm())


def test_the_template_cuts_the_subject_out_wherever_it_stands():
    assert template_of(IRAN) == "The official language of {} is"
    assert template_of(EGYPT).format("Spain") == "the official language of Spain is"
    braces = EditRecord("b", "In {set} notation Iran is", "x", subject="Iran")
    assert template_of(braces).format("Peru") == "In {set} notation Peru is"
    assert template_of(EditRecord("n", "The capital of Iran is", "x", subject="Iraq")) is None
    assert template_of(EditRecord("m", "The capital of Iran is", "x")) is None


def test_the_pool_keeps_one_spelling_per_name_and_round_trips(tiny_llama, tmp_path):
    pool = _pool(tiny_llama)
    assert pool.subjects.count("Spain") == 1 and "spain" not in pool.subjects
    assert pool.embeddings.shape[0] == len(pool.subjects)
    pool.save(tmp_path)
    loaded = SubjectPool.load(tmp_path, base_fingerprint=tiny_llama.fingerprint)
    assert loaded.subjects == pool.subjects and torch.equal(loaded.embeddings, pool.embeddings)
    with pytest.raises(SubjectPoolError, match="another base model"):
        SubjectPool.load(tmp_path, base_fingerprint="other")


def test_embedding_the_pool_reports_progress_up_to_its_size(tiny_llama):
    reports: list[tuple[int, int]] = []
    names = [f"Subject {index}" for index in range(300)]  # two batches of 256
    pool = build_subject_pool(
        tiny_llama.model, tiny_llama.tokenizer, names, tiny_llama.fingerprint,
        lambda done, total: reports.append((done, total)),
    )  # fmt: skip
    assert reports == [(256, 300), (300, 300)] and len(pool.subjects) == 300


def test_a_subject_a_scored_prompt_names_leaves_the_pool(tiny_llama):
    pool = _pool(tiny_llama).without_mentioned(
        ["The capital of EGYPT is", "Cote d'Ivoire's capital is", "An Iranian poet"]
    )
    assert "Egypt" not in pool.subjects and "Côte d'Ivoire" not in pool.subjects  # case and accents
    assert "Iran" in pool.subjects  # "Iranian" does not name Iran as a whole word
    assert pool.embeddings.shape[0] == len(pool.subjects)


def test_substitutes_use_the_edit_wording_and_never_an_edited_subject(tiny_llama):
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    facts = substitute_facts(model, tokenizer, [IRAN, EGYPT], _pool(tiny_llama), 3, min_probability=0.0)
    assert [len(per_record) for per_record in facts] == [3, 3]
    for record, per_record in zip([IRAN, EGYPT], facts, strict=True):
        for fact in per_record:
            subject = fact.prompt.removeprefix(template_of(record).split("{}")[0]).removesuffix(" is")
            assert subject in SUBJECTS and subject.lower() not in {"iran", "egypt"}
            assert fact.answer and fact.kind == "substitute"
    # A random model is confident of nothing: a high bar keeps no fact.
    strict = substitute_facts(model, tokenizer, [IRAN], _pool(tiny_llama), 3, min_probability=0.99)
    assert strict == [[]]


def test_same_wording_neighbours_barely_move_while_the_edit_still_moves(tiny_llama):
    editor = _ls_editor(tiny_llama)
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    settings = NeighbourSettings(weight=1e6, substitutes=3, min_probability=0.0)
    guarded = editor.with_neighbours(None, settings, _pool(tiny_llama))
    plain_rows, guarded_rows = (
        editor.edit_rows(model, tokenizer, [IRAN]),
        guarded.edit_rows(model, tokenizer, [IRAN]),
    )
    plain_count = plain_rows.row_record.shape[0]
    assert guarded_rows.row_record.shape[0] > plain_count
    assert set(guarded_rows.row_record[plain_count:].tolist()) == {0}  # the rows belong to the edit
    plain, solved = editor.aggregate(plain_rows), guarded.aggregate(guarded_rows)
    for name, delta in solved.deltas.items():
        extra = guarded_rows.keys[name][plain_count:].double()  # (rows, d_in) the substitutes' keys

        assert _moved(delta, extra) < 0.05 * _moved(plain.deltas[name], extra), name
        assert float(delta.norm()) > 0.0


def test_substitute_settings_are_validated():
    with pytest.raises(ValueError, match="substitutes"):
        NeighbourSettings(substitutes=-1)
    with pytest.raises(ValueError, match="min_probability"):
        NeighbourSettings(substitutes=1, min_probability=1.5)
    assert NeighbourSettings(substitutes=2).enabled and not NeighbourSettings().enabled
    assert NeighbourSettings(subject_free=1).enabled
    with pytest.raises(ValueError, match="subject_free"):
        NeighbourSettings(subject_free=len(SUBJECT_FREE_FILLERS) + 1)


def test_subject_free_wordings_fill_the_edits_own_wording_with_fillers_that_name_nothing(tiny_llama):
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    nameless = EditRecord(
        "who", "Who wrote it?", "Tolstoy", subject="War and Peace"
    )  # the prompt names no subject
    facts = subject_free_facts(model, tokenizer, [IRAN, nameless, EGYPT], 2)
    assert [fact.prompt for fact in facts[0]] == [
        "The official language of it is",
        "The official language of this is",
    ]
    assert facts[1] == []
    assert [fact.prompt for fact in facts[2]] == [
        "the official language of it is",
        "the official language of this is",
    ]
    assert all(fact.kind == "subject_free" and fact.answer for fact in facts[0] + facts[2])
    assert subject_free_facts(model, tokenizer, [IRAN], 0) == [[]]
    with pytest.raises(ValueError, match="count"):
        subject_free_facts(model, tokenizer, [IRAN], len(SUBJECT_FREE_FILLERS) + 1)


def test_subject_free_rows_need_no_subject_pool_and_barely_move_while_the_edit_still_moves(tiny_llama):
    editor = _ls_editor(tiny_llama)
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    guarded = editor.with_neighbours(None, NeighbourSettings(weight=1e6, subject_free=3))  # no pool, no bank
    plain_rows, guarded_rows = (
        editor.edit_rows(model, tokenizer, [IRAN, EGYPT]),
        guarded.edit_rows(model, tokenizer, [IRAN, EGYPT]),
    )
    plain_count = plain_rows.row_record.shape[0]
    owners = guarded_rows.row_record[plain_count:].tolist()
    assert set(owners) == {0, 1} and owners == sorted(owners)  # each edit owns its wording's rows
    plain, solved = editor.aggregate(plain_rows), guarded.aggregate(guarded_rows)
    for name, delta in solved.deltas.items():
        extra = guarded_rows.keys[name][plain_count:].double()  # (rows, d_in) the subject-free keys
        assert _moved(delta, extra) < 0.05 * _moved(plain.deltas[name], extra), name
        assert float(delta.norm()) > 0.0
