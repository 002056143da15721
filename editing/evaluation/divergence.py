"""Where an edit changed an unrelated answer, and how sure the unedited model had been there.

A locality regression is a prompt whose greedy answer differs after the edit. Two very different things
look alike in that list: a fact the model knew and now gets wrong (the Mona Lisa now painted by van Gogh),
and a continuation the model was guessing at a near tie, which any change to the weights may tip ("Clive
Betts worked in the city of Bordeaux" -> "Brest"). A reviewer weighs them differently, so each regression
carries the unedited model's *odds* at the token where the two answers part: the probability it gave its
own token there over the probability of the token the edited model chose. Odds near 1 are a near tie.

The gate does not use this: a changed answer is a changed answer. It is evidence for the person who
approves, and for the next engineer deciding whether a locality failure is bleed or noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from editing.core.forward import eval_mode

# Below these odds the unedited model preferred its own token by less than two to one: a near tie.
NEAR_TIE_ODDS = 2.0


def _answer_ids(tokenizer, answer: str) -> list[int]:
    # Greedy answers are stored stripped; generated after a prompt they began with a space.
    return tokenizer(" " + answer, add_special_tokens=False)["input_ids"]


def _parting(before: Sequence[int], after: Sequence[int]) -> int | None:
    """The first position where the two token sequences differ (None when one continues the other)."""
    for position, (old, new) in enumerate(zip(before, after, strict=False)):
        if old != new:
            return position
    return None


@torch.no_grad()
def divergence_odds(model: nn.Module, tokenizer, prompt: str, before: str, after: str) -> float | None:
    """The model's p(``before``'s token) / p(``after``'s token) at the first answer token where they differ,
    teacher-forcing the prompt and the shared part of the answers. None when they do not part (one
    answer is a prefix of the other, or they tokenise alike)."""
    old, new = _answer_ids(tokenizer, before), _answer_ids(tokenizer, after)
    position = _parting(old, new)
    if position is None:
        return None
    device = next(model.parameters()).device
    context = tokenizer(prompt)["input_ids"] + old[:position]
    with eval_mode(model):
        logits = model(input_ids=torch.tensor([context], device=device)).logits[0, -1]  # (vocab,)
    log_probs = torch.log_softmax(logits.float(), dim=-1)  # (vocab,)
    return math.exp(float(log_probs[old[position]] - log_probs[new[position]]))


def near_tie(odds: float | None) -> bool:
    return odds is not None and odds < NEAR_TIE_ODDS
