"""Greedy completions of prompts, and the rule that decides whether a completion gives an answer.

Scoring pads on the right (``editing.core.models`` sets that on every tokenizer), but generation must pad on
the left so every prompt ends at the last position. ``greedy_complete`` asks the tokenizer for left
padding per call, so the tokenizer's own setting is never changed.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Sequence

import torch
from torch import nn
from transformers import StoppingCriteria, StoppingCriteriaList

from editing.core.forward import eval_mode
from editing.core.tokens import pad_token_id

LOGGER = logging.getLogger(__name__)

# Articles that may lead an answer or a completion without changing what it names ("the Nile", "Nile").
ARTICLES = frozenset({"the", "a", "an"})
# Characters deleted outright rather than turned into a word break: "D.C." reads as "DC", "O'Neill" as
# "ONeill". Other punctuation separates words.
_DELETED_PUNCTUATION = re.compile(r"['’.]")
_NON_WORD = re.compile(r"[^0-9a-z]+")


def _check_prompts(prompts: Sequence[str]) -> None:
    if isinstance(prompts, str):
        raise TypeError("prompts must be a sequence of strings, not one string")
    for index, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"prompt {index}: expected a non-empty string, got {prompt!r}")


def context_length(model: nn.Module) -> int | None:
    """How many positions the model can attend over, when its config says."""
    return getattr(getattr(model, "config", None), "max_position_embeddings", None)


def _cut(text: str, stop_at_newline: bool) -> str:
    # Leading newlines are kept out of the cut: a model that opens with a line break still answers.
    text = text.lstrip()
    if stop_at_newline:
        text = text.split("\n", 1)[0]
    return text.strip()


class _RowsDone(StoppingCriteria):
    """Per row: it has its own ``limit`` of new tokens or (``stop_at_newline``) a line break after its
    first non-blank text, where ``_cut`` cuts; decoding more of it is wasted work. Generation stops once
    every row of the batch is done (few-shot paraphrases end their line after ~10 of 48 tokens)."""

    def __init__(self, tokenizer, prompt_length: int, limits: Sequence[int], stop_at_newline: bool):
        self.tokenizer, self.prompt_length, self.stop_at_newline = tokenizer, prompt_length, stop_at_newline
        self.limits = torch.tensor(limits)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        done = (input_ids.shape[1] - self.prompt_length) >= self.limits  # (batch,)
        if self.stop_at_newline:
            texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length :], skip_special_tokens=True)
            done |= torch.tensor(["\n" in text.lstrip() for text in texts])
        return done.to(input_ids.device)


@torch.no_grad()
def _complete_batch(
    model: nn.Module, tokenizer, prompts: Sequence[str], limits: Sequence[int], stop_at_newline: bool
) -> list[str]:
    """Each prompt's continuation of at most its own limit of new tokens, in one ``generate`` call."""
    encoded = tokenizer(list(prompts), return_tensors="pt", padding=True, padding_side="left")
    device = next(model.parameters()).device
    input_ids = encoded["input_ids"].to(device)  # (batch, seq), left-padded
    attention_mask = encoded["attention_mask"].to(device)
    start = input_ids.shape[1]
    output = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        max_new_tokens=max(limits),
        do_sample=False,
        num_beams=1,
        pad_token_id=pad_token_id(tokenizer),
        stopping_criteria=StoppingCriteriaList([_RowsDone(tokenizer, start, limits, stop_at_newline)]),
    )
    # generate returns prompt + continuation; only the continuation, up to the row's limit, is its own.
    return [
        tokenizer.decode(row[start : start + limit], skip_special_tokens=True)
        for row, limit in zip(output, limits, strict=True)
    ]


def _limits(max_new_tokens: int | Sequence[int], count: int) -> list[int]:
    limits = [max_new_tokens] * count if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(limits) != count or any(limit < 1 for limit in limits):
        raise ValueError(f"max_new_tokens: one value >= 1 or one per prompt ({count}), got {max_new_tokens}")
    return limits


def greedy_complete(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int | Sequence[int] = 8,
    batch_size: int = 16,
    stop_at_newline: bool = True,
) -> list[str]:
    """Greedy continuation of each prompt, without the prompt, cut at the first newline and stripped.

    ``max_new_tokens`` is one limit for all or one per prompt. Prompts are batched by token length so a
    batch holds little padding; the results come back in the order of ``prompts``.
    """
    _check_prompts(prompts)
    limits = _limits(max_new_tokens, len(prompts))
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    lengths = [len(tokenizer(prompt)["input_ids"]) for prompt in prompts]
    context = context_length(model)
    for index, (length, limit) in enumerate(zip(lengths, limits, strict=True)):
        if context is not None and length + limit > context:
            raise ValueError(
                f"prompt {index}: {length} tokens + {limit} new ones exceed the context of {context}"
            )
    order = sorted(range(len(prompts)), key=lambda index: (lengths[index], index))
    completions: list[str] = [""] * len(prompts)
    with eval_mode(model):
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            texts = _complete_batch(
                model,
                tokenizer,
                [prompts[row] for row in rows],
                [limits[row] for row in rows],
                stop_at_newline,
            )
            for row, text in zip(rows, texts, strict=True):
                completions[row] = _cut(text, stop_at_newline)
    LOGGER.debug("completed %d prompt(s) greedily", len(prompts))
    return completions


def normalise_words(text: str) -> list[str]:
    """Lower-case ASCII words: accents and case folded, apostrophes and full stops deleted."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    ascii_text = "".join(char for char in decomposed if not unicodedata.combining(char))
    return [word for word in _NON_WORD.split(_DELETED_PUNCTUATION.sub("", ascii_text)) if word]


def _without_article(words: list[str]) -> list[str]:
    return words[1:] if len(words) > 1 and words[0] in ARTICLES else words


def answer_matches(completion: str, answer: str) -> bool:
    """Whether ``completion`` gives ``answer`` as its first words.

    The rule: both texts are reduced to lower-case ASCII words (accents folded; apostrophes and full
    stops deleted; any other punctuation or whitespace separates words) and a leading article (the, a,
    an) is dropped from each. The completion matches when its first words, joined without spaces,
    equal the answer's words joined without spaces, so "J. K. Rowling" matches "JK Rowling" and
    "Washington, D.C." matches "Washington DC". A match must end at a word boundary: "Parisian" does
    not give "Paris", and neither does "Sydney" give "Sydney Opera House". Text after the answer is
    allowed ("Paris, the largest city in France").
    """
    answer_words = _without_article(normalise_words(answer))
    if not answer_words:
        raise ValueError(f"answer {answer!r} has no words to match")
    target = "".join(answer_words)
    joined = ""
    for word in _without_article(normalise_words(completion)):
        joined += word
        if joined == target:
            return True
        if not target.startswith(joined):
            return False
    return False
