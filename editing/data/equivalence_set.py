"""A flag's equivalence prompts, assembled from the sources in ``editing.data.equivalence`` in order of trust.

The flag's own paraphrases are kept as given. Generated ones (templates, then the model's own) must
also pass the answer check when the model is at hand: the champion must answer them as it answers the
flagged prompt (``editing.evaluation.answers.answered_alike``). A wording it answers in another form, e.g. a
"Q: ...\\nA:" question answered with a full sentence, cannot show whether the edit carried over.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from torch import nn

from editing.data.equivalence import dedupe, model_paraphrases, same_prompt, template_paraphrases
from editing.evaluation.answers import answered_alike

LOGGER = logging.getLogger(__name__)


def equivalence_prompts(
    prompt: str,
    given: Sequence[str] = (),
    subject: str | None = None,
    *,
    model: nn.Module | None = None,
    tokenizer=None,
    max_total: int = 4,
) -> list[str]:
    """Up to ``max_total`` equivalence prompts: the flag's own, then templates, then the model's."""
    if (model is None) != (tokenizer is None):
        raise ValueError("pass both model and tokenizer for model paraphrases, or neither")
    own = []
    for position, text in enumerate(given):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"given paraphrase {position}: expected a non-empty string, got {text!r}")
        if same_prompt(text, prompt):
            LOGGER.info("given paraphrase %d is the prompt itself; not used", position)
        own.append(text.strip())
    own = dedupe(prompt, own)
    templates = dedupe(prompt, [*own, *template_paraphrases(prompt, subject)])[len(own) :]
    if model is None:
        return [*own, *templates][:max_total]
    prompts = own + _answered_alike(model, tokenizer, prompt, templates)
    if len(prompts) < max_total:
        generated = model_paraphrases(model, tokenizer, prompt, subject, count=max_total - len(prompts))
        new = dedupe(prompt, [*prompts, *generated])[len(prompts) :]
        prompts += _answered_alike(model, tokenizer, prompt, new)
    return prompts[:max_total]


def _answered_alike(model: nn.Module, tokenizer, prompt: str, candidates: list[str]) -> list[str]:
    kept, rejected = answered_alike(model, tokenizer, prompt, candidates)
    for candidate, reason in rejected:
        LOGGER.info("paraphrase %r of %r not used: %s", candidate, prompt, reason)
    return kept
