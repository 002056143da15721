"""The model's answer: first clauses compared word by word, and the answer check on generated wordings."""

from __future__ import annotations

import pytest

import editing.evaluation.answers
from editing.evaluation.answers import answer_changed, answered_alike, first_clause, same_answer


@pytest.mark.parametrize(
    ("completion", "answer"),
    [
        ("Hanoi.", "Hanoi"),
        ("Arabic, which is the official language", "Arabic"),
        ("Jupiter, but it's not the only one", "Jupiter"),
        ("J. K. Rowling wrote it.", "J. K. Rowling wrote it"),
        ("St. Louis is a city", "St. Louis is a city"),
        ("the 2018", "the 2018"),
        ("Leonardo da Vinci (1452-1519)", "Leonardo da Vinci"),
        (", and then", ", and then"),  # a boundary before any word leaves the completion whole
    ],
)
def test_first_clause_is_the_answer_part(completion, answer):
    assert first_clause(completion) == answer


def test_same_answer_ignores_what_follows_the_answer_but_not_the_answer():
    assert same_answer("Sydney.", "Sydney, the largest city")
    assert same_answer("the Nile", "Nile, which flows north")
    assert not same_answer("Sydney", "Sydney Opera House")
    assert not same_answer("The capital of Australia is Sydney", "Sydney.")
    assert not same_answer("", "Sydney")


def test_answered_alike_keeps_wordings_answered_like_the_prompt(monkeypatch):
    # A stand-in for the model's greedy answers, so the test says exactly what each wording gets.
    answers = {
        "The capital of Australia is": "Sydney, the largest city.",
        "The capital city of Australia is": "Sydney.",
        "Q: What is the capital of Australia?\nA:": "The capital of Australia is Sydney.",
        "Australia's capital is": "Melbourne.",
    }
    monkeypatch.setattr(
        editing.evaluation.answers,
        "greedy_complete",
        lambda model, tokenizer, prompts, **_: [answers[p] for p in prompts],
    )
    kept, rejected = answered_alike(None, None, "The capital of Australia is", list(answers)[1:])
    assert kept == ["The capital city of Australia is"]
    assert [candidate for candidate, _ in rejected] == list(answers)[2:]
    assert "answered 'Melbourne'" in rejected[1][1] and "the prompt 'Sydney'" in rejected[1][1]
    assert answered_alike(None, None, "The capital of Australia is", []) == ([], [])


def test_a_changed_answer_is_told_by_its_words_or_by_its_text_when_it_has_none():
    assert not answer_changed("Spanish.", "spanish")
    assert answer_changed("Spanish, and English", "Spanish")  # what follows counts here
    assert answer_changed("Jupiter", "Mercury")
    # A night-two locality probe answered ":" before the edit (answer_matches refuses a wordless answer).
    assert not answer_changed(":", " :")
    assert answer_changed(":", "Paris")
    assert answer_changed("Paris", "...")
