"""Confident answers: the screen drops only what cannot reach the threshold and decodes the rest as before."""

from __future__ import annotations

import pytest

from editing.core.confidence import SCREEN_MARGIN, confident_answers, first_token_probabilities

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
