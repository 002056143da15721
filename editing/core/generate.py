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


@torch.no_grad()
def _complete_batch(model: nn.Module, tokenizer, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
    encoded = tokenizer(list(prompts), return_tensors="pt", padding=True, padding_side="left")
    device = next(model.parameters()).device
    input_ids = encoded["input_ids"].to(device)  # (batch, seq), left-padded
    attention_mask = encoded["attention_mask"].to(device)
    output = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=pad_token_id(tokenizer),
    )
    # generate returns prompt + continuation; only the continuation is the completion.
    return tokenizer.batch_decode(output[:, input_ids.shape[1] :], skip_special_tokens=True)


def greedy_complete(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 8,
    batch_size: int = 16,
    stop_at_newline: bool = True,
) -> list[str]:
    """Greedy continuation of each prompt, without the prompt, cut at the first newline and stripped.

    Prompts are batched by token length so a batch holds little padding; the results come back in the
    order of ``prompts``.
    """
    _check_prompts(prompts)
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"max_new_tokens ({max_new_tokens}) and batch_size ({batch_size}) must be >= 1")
    lengths = [len(tokenizer(prompt)["input_ids"]) for prompt in prompts]
    limit = context_length(model)
    for index, length in enumerate(lengths):
        if limit is not None and length + max_new_tokens > limit:
            raise ValueError(
                f"prompt {index}: {length} tokens + {max_new_tokens} new ones exceed the context of {limit}"
            )
    order = sorted(range(len(prompts)), key=lambda index: (lengths[index], index))
    completions: list[str] = [""] * len(prompts)
    with eval_mode(model):
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            texts = _complete_batch(model, tokenizer, [prompts[row] for row in rows], max_new_tokens)
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
