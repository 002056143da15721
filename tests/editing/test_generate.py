"""Greedy completion pads on the left without touching the tokenizer, and the answer-matching rule."""

from __future__ import annotations

import pytest

from editing.core.generate import answer_matches, greedy_complete, normalise_words
from tests.editing.test_real_model import real_model

PROMPTS = ["The capital of France is", "Harry Potter was written by", "Q: What is the capital of Italy?\nA:"]


def test_completions_come_back_in_order_and_match_one_at_a_time(tiny_model):
    """A left-padded batch gives each prompt the completion it gets alone, so padding is handled."""
    batched = greedy_complete(tiny_model.model, tiny_model.tokenizer, PROMPTS, max_new_tokens=5)
    alone = [
        greedy_complete(tiny_model.model, tiny_model.tokenizer, [prompt], max_new_tokens=5)[0]
        for prompt in PROMPTS
    ]
    assert batched == alone
    assert all("\n" not in text and text == text.strip() for text in batched)


def test_batch_size_and_repeats_do_not_change_completions(tiny_model):
    first = greedy_complete(tiny_model.model, tiny_model.tokenizer, PROMPTS * 2, max_new_tokens=4)
    second = greedy_complete(
        tiny_model.model, tiny_model.tokenizer, PROMPTS * 2, max_new_tokens=4, batch_size=2
    )
    assert first == second
    assert first[: len(PROMPTS)] == first[len(PROMPTS) :]


def test_tokenizer_keeps_right_padding_and_model_keeps_its_mode(tiny_gpt2):
    tiny_gpt2.model.train()
    try:
        greedy_complete(tiny_gpt2.model, tiny_gpt2.tokenizer, PROMPTS, max_new_tokens=2)
        assert tiny_gpt2.model.training
    finally:
        tiny_gpt2.model.eval()
    assert tiny_gpt2.tokenizer.padding_side == "right"


@pytest.mark.parametrize(
    ("prompts", "error"),
    [(["ok", "  "], ValueError), (["ok", None], ValueError), ("one string", TypeError)],
)
def test_bad_prompts_are_refused_with_their_index(tiny_llama, prompts, error):
    with pytest.raises(error, match="1" if error is ValueError else "sequence"):
        greedy_complete(tiny_llama.model, tiny_llama.tokenizer, prompts)


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        ("Paris.", "Paris", True),
        ("paris, the largest city in France", "Paris", True),
        ("the Nile River, which flows", "Nile", True),
        ("Nile", "the Nile", True),
        ("J.K. Rowling in 1997", "J. K. Rowling", True),
        ("Washington, D.C.", "Washington DC", True),
        ("Brasilia.", "Brasília", True),
        ("Alexander Graham Bell in 1876", "Alexander Graham Bell", True),
        ("Parisian cafés", "Paris", False),
        ("Sydney.", "Sydney Opera House", False),
        ("The capital of France is Paris.", "Paris", False),
        ("Sydney.", "Canberra", False),
        ("", "Paris", False),
        ("a", "a", True),
    ],
)
def test_answer_matches(completion, answer, expected):
    assert answer_matches(completion, answer) is expected


def test_answer_without_words_is_refused():
    with pytest.raises(ValueError, match="no words"):
        answer_matches("Paris", " ... ")


def test_normalise_words_folds_case_accents_and_punctuation():
    assert normalise_words("Sagrada Família, O'Neill's D.C.!") == ["sagrada", "familia", "oneills", "dc"]


@pytest.mark.real_model
def test_real_model_answers_capital_of_france():
    """SmolLM2 restates the question in Q/A form, and answers completion prompts with the answer first."""
    loaded = real_model()
    qa, completion = greedy_complete(
        loaded.model, loaded.tokenizer, ["Q: What is the capital of France?\nA:", "The capital of France is"]
    )
    assert "Paris" in qa, qa
    assert answer_matches(completion, "Paris"), completion


@pytest.mark.real_model
def test_decoding_stops_once_every_line_has_ended_and_gives_the_same_completions():
    """Stopping at the line break saves the forward passes after it and changes no completion."""
    loaded = real_model()
    prompts = ["The capital of Italy is Rome.\nThe capital of Spain is", "Q: Who wrote Hamlet?\nA:"]
    calls = []
    handle = loaded.model.register_forward_hook(lambda *_: calls.append(1))
    try:
        cut = greedy_complete(loaded.model, loaded.tokenizer, prompts, max_new_tokens=40)
        stopped_after = len(calls)
        calls.clear()
        whole = greedy_complete(
            loaded.model, loaded.tokenizer, prompts, max_new_tokens=40, stop_at_newline=False
        )
    finally:
        handle.remove()
    assert cut == [text.split("\n", 1)[0].strip() for text in whole]
    assert any("\n" in text for text in whole)  # the prompts do run past their first line
    assert stopped_after < len(calls) == 40
