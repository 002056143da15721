"""Sibling subjects: the edit's own prompt with the last word of its subject swapped for words the base
model itself puts there.

Same-wording neighbours (``editing.mend.substitutes``) fill an edit's wording with names from a pool, and
fail where the pool has nothing of the right kind or where the subject is a description: "The planet
closest to the Sun is" has the template "{} is", and its edit moved "The largest planet in the Solar
System is" (the demo's costliest bleed). Siblings need no pool. The prompt up to the subject's last word
("The planet closest to the") is a stem; the base model's likeliest next words there that complete a
word of the same case ("Earth", "Moon") are subjects it treats as alternatives, and "The planet closest
to the Earth is", answered by the base model, joins the solve as a zero-shift row like any neighbour.
For a one-word subject the stem is the wording before it ("The capital of" -> Spain, Germany).

Deterministic (no sampling): two forward passes per batch of stems. A sibling that names another edit's
subject, or a name in ``excluded`` (what the gate scores), is never used.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn

from editing.core.confidence import next_token_logits
from editing.data.records import EditRecord, PromptAnswer
from editing.mend.substitutes import answered_facts, subject_name, template_of

SIBLING_KIND = "sibling"
_WHOLE_WORD = re.compile(r"^ [^\W\d_][\w-]{2,}$")  # a token that is a space and a word of 3+ letters
CANDIDATES_PER_SIBLING = 4  # next words looked at per sibling wanted


def sibling_stem(record: EditRecord) -> tuple[str, str, str] | None:
    """(stem, subject's leading words, its last word) where the record's prompt names its subject after
    some wording; None otherwise. The stem is the prompt up to the subject's last word, unpadded."""
    template = template_of(record)
    if template is None:
        return None
    match = re.search(re.escape(record.subject.strip()), record.prompt, flags=re.IGNORECASE)
    subject = match.group()  # as the prompt spells it
    last = subject.rsplit(maxsplit=1)[-1]
    leading = subject[: len(subject) - len(last)]
    stem = (record.prompt[: match.start()] + leading).rstrip()
    return (stem, leading, last) if stem else None


def token_text(tokenizer, previous: int, token: int) -> str:
    """The text ``token`` adds after the token ``previous``, its leading space included. Decoded alone, a
    SentencePiece token drops the space its "▁" stands for ("▁Earth" -> "Earth"); decoded after another
    token it keeps it, as a byte-level one ("ĠEarth") always does."""
    alone = tokenizer.decode([previous])
    both = tokenizer.decode([previous, token])
    return both[len(alone) :] if both.startswith(alone) else tokenizer.decode([token])


def _last_tokens(tokenizer, prompts: Sequence[str]) -> list[int]:
    return [tokenizer(prompt)["input_ids"][-1] for prompt in prompts]


def _next_words(model, tokenizer, stems: Sequence[str], count: int) -> list[list[str]]:
    """Per stem, up to ``count`` of its likeliest next tokens that are a space and one word, likeliest
    first."""
    words: list[list[str]] = []
    previous = iter(_last_tokens(tokenizer, stems))
    for logits in next_token_logits(model, tokenizer, stems, batch_size=32, fast=False):
        for row in logits.topk(count * 8, dim=-1).indices.tolist():
            last = next(previous)
            texts = [token_text(tokenizer, last, token) for token in row]
            words.append([text[1:] for text in texts if _WHOLE_WORD.match(text)][:count])
    return words


def _closes(model, tokenizer, prompts: Sequence[str], resumes: Sequence[str]) -> list[bool]:
    """Whether the base model ends the subject at the end of each prompt: its next token is punctuation,
    a line break, or the word its template resumes with (``resumes``). "The capital of Portugal" goes on
    with "is"; "The capital of New" with "York", so "New" is no sibling."""
    closed: list[bool] = []
    previous = _last_tokens(tokenizer, prompts)
    batches = next_token_logits(model, tokenizer, prompts, batch_size=32, fast=False)
    for start, logits in zip(range(0, len(prompts), 32), batches, strict=True):
        for offset, token in enumerate(logits.argmax(-1).tolist()):
            text = token_text(tokenizer, previous[start + offset], token)
            word = text.strip()
            resumed = text[:1].isspace() and word.casefold() == resumes[start + offset].casefold()
            # A clause mark closes a subject too ("The theory of evolution, ..."); an apostrophe does
            # not ("doesn" before "'t"), nor does a word other than the wording's own.
            closed.append(resumed or not word or word[0] in ",.;:!?)")
    return closed


def sibling_prompts(
    records: Sequence[EditRecord], words: dict[int, Sequence[str]], excluded: frozenset[str] = frozenset()
) -> list[tuple[int, str]]:
    """(record index, prompt) for each of ``words[index]`` (next words after the record's stem) that can
    stand for the subject's last word: written with the same case, and naming neither a subject of
    ``records`` nor a name in ``excluded``."""
    busy = {subject_name(record.subject) for record in records if record.subject} | set(excluded)
    asked: list[tuple[int, str]] = []
    for index, candidates in words.items():
        stem = sibling_stem(records[index])
        if stem is None:
            continue
        _, leading, last = stem
        for word in candidates:
            sibling = leading + word
            if word[:1].isupper() == last[:1].isupper() and subject_name(sibling) not in busy:
                asked.append((index, template_of(records[index]).format(sibling)))
    return asked


@torch.no_grad()
def sibling_facts(
    model: nn.Module,
    tokenizer,
    records: Sequence[EditRecord],
    count: int,
    *,
    min_probability: float = 0.0,
    excluded: frozenset[str] = frozenset(),
) -> list[list[PromptAnswer]]:
    """Per record, up to ``count`` prompts in its own wording about sibling subjects (module docstring),
    each with the base ``model``'s greedy answer, where its first token has at least ``min_probability``.
    By default every answer counts: a sibling is the model's own alternative to the subject, not a fact
    it must know, and a zero-shift row holds the layer's output there whatever the answer. No sibling
    names a subject of ``records`` or a name in ``excluded`` (normalised words)."""
    facts: list[list[PromptAnswer]] = [[] for _ in records]
    stems = {index: sibling_stem(record) for index, record in enumerate(records)}
    stems = {index: stem for index, stem in stems.items() if stem is not None}
    if count < 1 or not stems:
        return facts
    found = _next_words(
        model, tokenizer, [stem for stem, _, _ in stems.values()], count * CANDIDATES_PER_SIBLING
    )
    asked = sibling_prompts(records, dict(zip(stems, found, strict=True)), excluded)
    cut = [_subject_end(prompt, records[index]) for index, prompt in asked]  # (prompt to it, next word)
    closed = _closes(model, tokenizer, [head for head, _ in cut], [resume for _, resume in cut])
    asked = [question for question, done in zip(asked, closed, strict=True) if done]
    return answered_facts(model, tokenizer, asked, facts, count, SIBLING_KIND, min_probability)


def _subject_end(prompt: str, record: EditRecord) -> tuple[str, str]:
    """A sibling prompt up to the end of its sibling subject, and the first word of the record's wording
    after the subject ("" when the subject ends the prompt)."""
    after = template_of(record).split("{}", 1)[1].replace("{{", "{").replace("}}", "}")
    words = after.split()
    return (prompt[: len(prompt) - len(after)] if after else prompt), (words[0] if words else "")
