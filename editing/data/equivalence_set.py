"""A flag's equivalence prompts, assembled from the sources in ``editing.data.equivalence`` in order of trust.

The flag's own paraphrases are kept as given. Generated ones (templates, then the model's own) must
also pass the answer check when the model is at hand: the champion must answer them as it answers the
flagged prompt (``editing.evaluation.answers.answered_alike``). A wording it answers in another form, e.g. a
"Q: ...\\nA:" question answered with a full sentence, cannot show whether the edit carried over.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from editing.core.generate import greedy_complete
from editing.data.equivalence import dedupe, model_paraphrase_sets, same_prompt, template_paraphrases
from editing.evaluation.answers import split_alike

LOGGER = logging.getLogger(__name__)
_ANSWER_TOKENS = 8  # as answered_alike: enough of an answer to compare its first clause


@dataclass(frozen=True)
class EquivalenceRequest:
    """One flagged prompt: its own paraphrases (``given``) and its subject."""

    prompt: str
    given: Sequence[str] = ()
    subject: str | None = None


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
    request = EquivalenceRequest(prompt, given, subject)
    return equivalence_prompt_sets([request], model=model, tokenizer=tokenizer, max_total=max_total)[0]


def equivalence_prompt_sets(
    requests: Sequence[EquivalenceRequest],
    *,
    model: nn.Module | None = None,
    tokenizer=None,
    max_total: int = 4,
) -> list[list[str]]:
    """``equivalence_prompts`` of many flags, each stage's model calls batched across all of them: one
    flag at a time decodes a handful of rows per step, which on a CPU costs as much as decoding dozens."""
    if (model is None) != (tokenizer is None):
        raise ValueError("pass both model and tokenizer for model paraphrases, or neither")
    own = [_own_paraphrases(request) for request in requests]
    templates = [
        dedupe(r.prompt, [*mine, *template_paraphrases(r.prompt, r.subject)])[len(mine) :]
        for r, mine in zip(requests, own, strict=True)
    ]
    if model is None:
        return [[*mine, *made][:max_total] for mine, made in zip(own, templates, strict=True)]
    # The flagged prompts' own answers come with the first batch; later candidates are judged by them.
    references, template_answers = _answers(model, tokenizer, templates, leading=[r.prompt for r in requests])
    chosen = [
        mine + _kept(r.prompt, reference, made, answers)
        for r, mine, made, reference, answers in zip(requests, own, templates, references, template_answers, strict=True)
    ]  # fmt: skip
    wanted = [
        (r.prompt, r.subject, max_total - len(prompts)) for r, prompts in zip(requests, chosen, strict=True)
    ]
    generated = model_paraphrase_sets(model, tokenizer, wanted)
    new = [dedupe(r.prompt, [*prompts, *made])[len(prompts) :] for r, prompts, made in zip(requests, chosen, generated, strict=True)]  # fmt: skip
    _, new_answers = _answers(model, tokenizer, new)
    return [
        (prompts + _kept(r.prompt, reference, made, answers))[:max_total]
        for r, prompts, made, reference, answers in zip(requests, chosen, new, references, new_answers, strict=True)
    ]  # fmt: skip


def _answers(
    model: nn.Module, tokenizer, candidates: list[list[str]], leading: Sequence[str] = ()
) -> tuple[list[str], list[list[str]]]:
    """The model's answers to ``leading`` and to every list of ``candidates``, all in one greedy call."""
    flat = [*leading, *(candidate for made in candidates for candidate in made)]
    answers = (
        greedy_complete(model, tokenizer, flat, max_new_tokens=_ANSWER_TOKENS, batch_size=32) if flat else []
    )
    rest = iter(answers[len(leading) :])
    return answers[: len(leading)], [[next(rest) for _ in made] for made in candidates]


def _own_paraphrases(request: EquivalenceRequest) -> list[str]:
    own = []
    for position, text in enumerate(request.given):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"given paraphrase {position}: expected a non-empty string, got {text!r}")
        if same_prompt(text, request.prompt):
            LOGGER.info("given paraphrase %d is the prompt itself; not used", position)
        own.append(text.strip())
    return dedupe(request.prompt, own)


def _kept(prompt: str, reference: str, candidates: list[str], answers: list[str]) -> list[str]:
    kept, rejected = split_alike(reference, candidates, answers)
    for candidate, reason in rejected:
        LOGGER.info("paraphrase %r of %r not used: %s", candidate, prompt, reason)
    return kept
