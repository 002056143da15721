"""Confident answers: the screen drops only what cannot reach the threshold and decodes the rest as before."""

from __future__ import annotations

import math

import pytest
import torch

from editing.core.confidence import (
    FIRST_WORD,
    SCREEN_MARGIN,
    confident_answers,
    first_token_probabilities,
    first_word_tokens,
)

PROMPTS = [
    f"{subject} {relation}"
    for subject in ("Paris", "The Danube", "Mozart", "Toyota", "Mount Fuji")
    for relation in ("is located in", "was founded by", "speaks", "belongs to")
]


def _plain(loaded) -> list[tuple[str, float]]:
    return confident_answers(loaded.model, loaded.tokenizer, PROMPTS, max_new_tokens=3, batch_size=8)


def test_the_screen_probability_is_the_first_decoded_token_s(tiny_model):
    plain = _plain(tiny_model)
    screen = first_token_probabilities(tiny_model.model, tiny_model.tokenizer, PROMPTS, batch_size=8)
    assert len(screen) == len(PROMPTS)
    for (_, decoded), screened in zip(plain, screen, strict=True):
        assert abs(decoded - screened) < SCREEN_MARGIN / 5


def test_screening_changes_no_answer_that_reaches_the_threshold(tiny_model):
    plain = _plain(tiny_model)
    ranked = sorted(probability for _, probability in plain)
    threshold = ranked[len(ranked) // 2]  # half the prompts on each side
    screened = confident_answers(
        tiny_model.model, tiny_model.tokenizer, PROMPTS, max_new_tokens=3, batch_size=8,
        min_probability=threshold,
    )  # fmt: skip
    kept = 0
    for (answer, probability), (screened_answer, screened_probability) in zip(plain, screened, strict=True):
        if probability >= threshold:
            kept += 1
            assert screened_answer == answer and screened_probability == pytest.approx(probability, abs=1e-4)
        else:
            assert screened_probability < threshold
            # Far below the threshold it was never decoded.
            if probability < threshold - 2 * SCREEN_MARGIN:
                assert screened_answer == ""
    assert kept >= len(PROMPTS) // 2


def test_without_a_threshold_every_prompt_is_decoded(tiny_llama):
    answers = confident_answers(
        tiny_llama.model, tiny_llama.tokenizer, PROMPTS[:3], max_new_tokens=2, batch_size=2
    )
    assert len(answers) == 3 and all(0.0 < probability <= 1.0 for _, probability in answers)
    with pytest.raises(ValueError, match="batch_size"):
        confident_answers(tiny_llama.model, tiny_llama.tokenizer, PROMPTS[:1], max_new_tokens=2, batch_size=0)


@pytest.mark.parametrize(
    ("completion", "word"),
    [(" 2014. The", "2014"), (" Canberra, the", "Canberra"), ('"Amara" (Amar', "Amara"), (" Paris", "Paris")],
)
def test_the_first_word_is_spelled_by_the_leading_tokens_that_close_it(tiny_model, completion, word):
    tokenizer = tiny_model.tokenizer
    ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    count = first_word_tokens(tokenizer, ids)
    spelled = tokenizer.decode(ids[:count])
    assert word in spelled  # every token of the word is counted...
    if count > 1:  # ...and no token after the one that completes it
        assert word not in tokenizer.decode(ids[: count - 1])


def test_a_first_words_probability_is_the_product_over_its_tokens(tiny_model):
    """Checked against the model's own step probabilities, by teacher forcing the greedy answer."""
    model, tokenizer = tiny_model.model, tiny_model.tokenizer
    prompts = PROMPTS[:6]
    token = confident_answers(model, tokenizer, prompts, max_new_tokens=4, batch_size=3)
    word = confident_answers(
        model, tokenizer, prompts, max_new_tokens=4, batch_size=3, confidence=FIRST_WORD
    )  # fmt: skip
    for prompt, (answer, first), (same_answer, whole) in zip(prompts, token, word, strict=True):
        assert same_answer == answer and whole <= first + 1e-6
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        probabilities = []
        with torch.no_grad():
            for _ in range(4):
                step = torch.softmax(model(input_ids=ids).logits[0, -1].float(), dim=-1)
                probabilities.append(float(step.max()))
                ids = torch.cat([ids, step.argmax().view(1, 1)], dim=1)
        generated = ids[0, -4:].tolist()
        count = max(first_word_tokens(tokenizer, generated), 1)
        assert first == pytest.approx(probabilities[0], abs=1e-4)
        assert whole == pytest.approx(math.prod(probabilities[:count]), abs=1e-4)
    with pytest.raises(ValueError, match="confidence"):
        confident_answers(
            model, tokenizer, prompts, max_new_tokens=2, batch_size=2, confidence="first_letter"
        )
