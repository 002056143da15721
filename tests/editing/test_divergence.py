"""A locality regression's odds: how sure the unedited model was where the two answers part."""

from __future__ import annotations

import math

import pytest
import torch

from editing.core.generate import greedy_complete
from editing.evaluation.divergence import NEAR_TIE_ODDS, divergence_odds, near_tie

PROMPT = "The capital of France is"


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(" " + text, add_special_tokens=False)["input_ids"]


def test_the_odds_are_the_models_own_probabilities_where_the_answers_part(tiny_model):
    model, tokenizer = tiny_model.model, tiny_model.tokenizer
    (before,) = greedy_complete(model, tokenizer, [PROMPT], max_new_tokens=4)
    old = _ids(tokenizer, before)
    # Another answer sharing the first token: it parts at the second.
    other = next(t for t in range(5, 500) if t != old[1] and tokenizer.decode([t]).strip().isalpha())
    after = tokenizer.decode([old[0], other]).strip()
    new = _ids(tokenizer, after)
    parting = next(i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b)
    with torch.no_grad():
        context = torch.tensor([tokenizer(PROMPT)["input_ids"] + old[:parting]])
        log_probs = torch.log_softmax(model(input_ids=context).logits[0, -1].float(), dim=-1)
    expected = math.exp(float(log_probs[old[parting]] - log_probs[new[parting]]))
    odds = divergence_odds(model, tokenizer, PROMPT, before, after)
    assert odds == pytest.approx(expected, rel=1e-4)
    assert divergence_odds(model, tokenizer, PROMPT, after, before) == pytest.approx(1 / expected, rel=1e-4)


def test_answers_that_do_not_part_have_no_odds_and_near_ties_are_below_two_to_one(tiny_llama):
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    assert divergence_odds(model, tokenizer, PROMPT, "Paris is big", "Paris is") is None
    assert divergence_odds(model, tokenizer, PROMPT, "Paris", "Paris") is None
    assert near_tie(1.2) and not near_tie(NEAR_TIE_ODDS) and not near_tie(50.0) and not near_tie(None)
