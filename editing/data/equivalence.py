"""Equivalence prompts: other wordings of a flagged prompt that must also get the correction.

Three sources, in order of trust: the flag's own paraphrases, deterministic templates (a small table of
equivalent wordings per relation, plus the prompt formats "Q: ...\\nA:", "Question: ...\\nAnswer:" and the
bare question), and paraphrases written by the base model from a few-shot prompt. Model paraphrases are
kept only when they still ask the same question (``paraphrase_rejection``). Nothing needs a service.
``editing.data.equivalence_set`` assembles them for one flag.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from editing.core.generate import ARTICLES, context_length, greedy_complete, normalise_words

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class Wrapper:
    """Text around a question that makes a model answer it, e.g. ``Q: {question}\\nA:``."""

    prefix: str
    suffix: str
    pattern: re.Pattern[str]

    def wrap(self, core: str) -> str:
        return f"{self.prefix}{core}{self.suffix}"


WRAPPERS = (
    # One line of question only: a few-shot prompt ("Q: ...\nA: ...\nQ: ...\nA:") is not one wrapped question.
    Wrapper("Q: ", "\nA:", re.compile(r"Q:[ \t]*(?P<core>[^\n]+?)\s*\n[ \t]*A:")),
    Wrapper("Question: ", "\nAnswer:", re.compile(r"Question:[ \t]*(?P<core>[^\n]+?)\s*\n[ \t]*Answer:")),
)
# Equivalent wordings of one relation; {x} is the thing asked about. A pattern ending in "?" is a
# question, any other is a completion prompt the model continues with the answer.
RELATIONS: tuple[tuple[str, ...], ...] = (
    ("Who wrote {x}?", "Who is the author of {x}?", "{x} was written by", "The author of {x} is"),
    (
        "What is the capital of {x}?",
        "Which city is the capital of {x}?",
        "The capital of {x} is",
        "The capital city of {x} is",
    ),
    ("Who invented {x}?", "Who is the inventor of {x}?", "{x} was invented by", "The inventor of {x} was"),
    ("Who painted {x}?", "Who is the painter of {x}?", "{x} was painted by", "The painter of {x} was"),
    ("Who discovered {x}?", "Who is credited with discovering {x}?", "{x} was discovered by"),
    (
        "What is the chemical symbol for {x}?",
        "What is the symbol of the chemical element {x}?",
        "The chemical symbol for {x} is",
        "The symbol of the chemical element {x} is",
    ),
    (
        "What is the currency of {x}?",
        "Which currency is used in {x}?",
        "The currency of {x} is the",
        "The official currency of {x} is the",
    ),
    (
        "What is the official language of {x}?",
        "Which language is spoken in {x}?",
        "The official language of {x} is",
        "The main language spoken in {x} is",
    ),
    (
        "In which city is {x}?",
        "Where is {x} located?",
        "{x} is located in the city of",
        "{x} stands in the city of",
    ),
)
_ARTICLE_START = re.compile(r"^(The|A|An) ")


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    before, _, after = pattern.partition("{x}")
    return re.compile(re.escape(before) + r"(?P<x>.+?)" + re.escape(after), re.IGNORECASE)


def _collapse_spaces(text: str) -> str:
    # Runs of spaces collapse; line breaks stay, since they carry a multi-line prompt's structure.
    return "\n".join(" ".join(line.split()) for line in text.strip().splitlines())


def split_prompt(prompt: str) -> tuple[str, Wrapper | None]:
    """The question or completion prompt inside ``prompt`` and the wrapper around it, if any."""
    stripped = prompt.strip()
    for wrapper in WRAPPERS:
        match = wrapper.pattern.fullmatch(stripped)
        if match:
            return _collapse_spaces(match["core"]), wrapper
    return _collapse_spaces(stripped), None


def is_question(core: str) -> bool:
    return core.rstrip().endswith("?")


def same_prompt(first: str, second: str) -> bool:
    return " ".join(first.casefold().split()) == " ".join(second.casefold().split())


def _place(thing: str, at_start: bool, subject: str | None) -> str:
    if at_start:
        return thing[:1].upper() + thing[1:]
    # "The Eiffel Tower is located in" -> "Where is the Eiffel Tower located?", unless the subject
    # itself starts with a capitalised article (a title such as "The Hobbit").
    if _ARTICLE_START.match(thing) and not (subject and _ARTICLE_START.match(subject)):
        return thing[0].lower() + thing[1:]
    return thing


def relation_rewrites(core: str, subject: str | None = None) -> list[str]:
    """Other wordings of ``core`` from the relation table; with a subject, only those that keep it."""
    rewrites: list[str] = []
    for relation in RELATIONS:
        for pattern in relation:
            match = _pattern_regex(pattern).fullmatch(core)
            if not match:
                continue
            thing = match["x"].strip()
            for other in relation:
                if other == pattern:
                    continue
                text = other.replace("{x}", _place(thing, other.startswith("{x}"), subject))
                rewrites.append(text[:1].upper() + text[1:])
            break
    if subject:
        rewrites = [text for text in rewrites if subject.casefold() in text.casefold()]
    return rewrites


def dedupe(prompt: str, candidates: Sequence[str]) -> list[str]:
    kept: list[str] = []
    for candidate in candidates:
        if not same_prompt(candidate, prompt) and not any(same_prompt(candidate, seen) for seen in kept):
            kept.append(candidate)
    return kept


def template_paraphrases(prompt: str, subject: str | None = None) -> list[str]:
    """Deterministic rewrites of ``prompt`` that keep its question, most similar in form first.

    Order: rewordings of the same kind (question or completion prompt) in the prompt's own wrapper, then
    the same question in the other wrappers, then rewordings of the other kind. A question is wrapped as
    "Q: ...\\nA:" when the prompt had no wrapper of its own to lend it. The prompt itself never appears.
    """
    core, wrapper = split_prompt(prompt)
    question = is_question(core)
    rewrites = relation_rewrites(core, subject)
    same_kind = [text for text in rewrites if is_question(text) == question]
    other_kind = [text for text in rewrites if is_question(text) != question]
    candidates = [wrapper.wrap(text) if wrapper and question else text for text in same_kind]
    if question:
        candidates += [other.wrap(core) for other in WRAPPERS if other is not wrapper]
        if wrapper is not None:
            candidates.append(core)
    for text in other_kind:
        candidates.append((wrapper or WRAPPERS[0]).wrap(text) if is_question(text) else text)
    return dedupe(prompt, candidates)


# Words too common to show that a paraphrase is about the same thing.
_STOPWORDS = frozenset(
    {"a", "an", "and", "are", "as", "at", "be", "by", "did", "do", "does", "for", "from", "has", "have"}
    | {"in", "is", "it", "its", "of", "on", "or", "the", "to", "was", "were", "with"}
    | {"what", "when", "where", "which", "who", "whom", "whose", "why", "how"}
)
MIN_SHARED_CONTENT = 0.5
_POSSESSIVE = re.compile(r"['’]s\b")
_CAPITALISED = re.compile(r"\b[A-Z][\w'’-]*")
# Last words of a completion prompt that leave its answer to come ("... was written by", "... is the").
OPEN_ENDINGS = frozenset(
    {"is", "was", "are", "were", "by", "of", "the", "a", "an", "in", "at", "on", "to", "for", "from"}
    | {"as", "called", "named", "known", "than"}
)


def _content_words(text: str) -> set[str]:
    return {word for word in normalise_words(_POSSESSIVE.sub("", text)) if word not in _STOPWORDS}


def _names(core: str) -> set[str]:
    """Capitalised words after the first: the names a paraphrase must keep ("Australia", "Hamlet")."""
    words = [match.group() for match in _CAPITALISED.finditer(core) if match.start() > 0]
    return _content_words(" ".join(words))


def _words_without_articles(text: str) -> list[str]:
    return [word for word in normalise_words(text) if word not in ARTICLES]


def _ends_like(candidate_core: str, core: str) -> bool:
    """A question ends with "?"; a completion prompt ends on a word that needs its answer after it."""
    if is_question(core):
        return True
    candidate_words, words = normalise_words(candidate_core), normalise_words(core)
    if not candidate_words or candidate_core.rstrip()[-1:] in ".!,;:":
        return False
    return candidate_words[-1] in OPEN_ENDINGS or candidate_words[-1] == words[-1]


def paraphrase_rejection(prompt: str, candidate: str, subject: str | None = None) -> str | None:
    """Why ``candidate`` is not a usable paraphrase of ``prompt``, or None when it is.

    A paraphrase must be non-empty, be at most twice as long as the prompt (plus four words), use the
    prompt's wrapper and end the same way (a question with "?"; a completion prompt on a word that
    leaves the answer to come, from ``OPEN_ENDINGS`` or the prompt's own last word), differ from the
    prompt by more than articles and not merely contain it, and keep the topic: contain the subject
    when it is known, otherwise keep every capitalised name after the first word and at least half of
    the prompt's content words (a possessive "Peru's" counts as "Peru").
    """
    core, wrapper = split_prompt(prompt)
    candidate_core, candidate_wrapper = split_prompt(candidate)
    if not candidate_core:
        return "empty"
    if same_prompt(candidate_core, core):
        return "same as the prompt"
    if len(candidate_core.split()) > 2 * len(core.split()) + 4:
        return "too long"
    if candidate_wrapper is not wrapper:
        return "different prompt format"
    if is_question(candidate_core) != is_question(core) or not _ends_like(candidate_core, core):
        return "does not end like the prompt"
    if _words_without_articles(candidate_core) == _words_without_articles(core):
        return "same as the prompt apart from articles"
    if core.casefold() in candidate_core.casefold():
        return "repeats the prompt inside a longer text"
    if subject:
        if subject.casefold() not in candidate_core.casefold():
            return f"does not mention the subject {subject!r}"
        return None
    candidate_words = _content_words(candidate_core)
    missing_names = sorted(_names(core) - candidate_words)
    if missing_names:
        return f"drops the name(s) {missing_names}"
    wanted = _content_words(core)
    if wanted and len(wanted & candidate_words) < MIN_SHARED_CONTENT * len(wanted):
        return "shares too few content words with the prompt"
    return None


def filter_paraphrases(prompt: str, candidates: Sequence[str], subject: str | None = None) -> list[str]:
    """The candidates that pass ``paraphrase_rejection``, deduplicated; each rejection is logged."""
    kept: list[str] = []
    for candidate in candidates:
        if any(same_prompt(candidate, seen) for seen in kept):
            LOGGER.debug("paraphrase %r of %r rejected: duplicate", candidate, prompt)
            continue
        reason = paraphrase_rejection(prompt, candidate, subject)
        if reason is None:
            kept.append(candidate)
        else:
            LOGGER.debug("paraphrase %r of %r rejected: %s", candidate, prompt, reason)
    return kept


# Few-shot demonstrations, one list per prompt kind. Each variant of the few-shot prompt starts from a
# different demonstration, so greedy decoding still gives several different candidates.
_QUESTION_SHOTS = (
    ("Who wrote Hamlet?", "Who is the author of Hamlet?"),
    ("What is the capital of Peru?", "Which city is the capital of Peru?"),
    ("What language do people speak in Chile?", "What is the main language of Chile?"),
    ("Who founded the company Tesla?", "Which person started the company Tesla?"),
)
_COMPLETION_SHOTS = (
    ("Hamlet was written by", "The author of Hamlet is"),
    ("The capital of Peru is", "The capital city of Peru is"),
    ("The main language of Chile is", "The language people speak in Chile is"),
    ("The company Tesla was founded by", "The founder of the company Tesla is"),
)


def _few_shot_prompts(core: str, variants: int, shots_per_prompt: int) -> list[str]:
    question = is_question(core)
    shots = _QUESTION_SHOTS if question else _COMPLETION_SHOTS
    label = "Question" if question else "Sentence"
    prompts = []
    for variant in range(variants):
        rotated = shots[variant % len(shots) :] + shots[: variant % len(shots)]
        lines = [f"Rewrite each {label.lower()} in other words with the same meaning."]
        for source, target in rotated[:shots_per_prompt]:
            lines += [f"{label}: {source}", f"Rewrite: {target}"]
        lines += [f"{label}: {core}", "Rewrite:"]
        prompts.append("\n".join(lines))
    return prompts


def _fitting_prompts(model: nn.Module, tokenizer, core: str, variants: int, max_new_tokens: int) -> list[str]:
    """Few-shot prompts with as many demonstrations (up to 3) as the model's context allows."""
    limit = context_length(model)
    for shots_per_prompt in (3, 2, 1):
        prompts = _few_shot_prompts(core, variants, shots_per_prompt)
        longest = max(len(tokenizer(prompt)["input_ids"]) for prompt in prompts)
        if limit is None or longest + max_new_tokens <= limit:
            return prompts
    return []


def model_paraphrases(
    model: nn.Module, tokenizer, prompt: str, subject: str | None = None, *, count: int = 2
) -> list[str]:
    """Up to ``count`` paraphrases written by ``model`` (greedy, so deterministic) that pass the filter."""
    return model_paraphrase_sets(model, tokenizer, [(prompt, subject, count)])[0]


def model_paraphrase_sets(
    model: nn.Module, tokenizer, requests: Sequence[tuple[str, str | None, int]]
) -> list[list[str]]:
    """Per ``(prompt, subject, count)``: up to ``count`` paraphrases written by ``model`` that pass the
    filter, every request's few-shot prompts decoded in the same batches.

    Each of ``2 * count`` few-shot prompts starts from a different demonstration, so greedy decoding
    proposes several candidates; those that change the question are dropped by ``filter_paraphrases``.
    """
    few_shot, limits, owner = [], [], []
    for index, (prompt, _, count) in enumerate(requests):
        if count < 1:
            continue
        core, _ = split_prompt(prompt)
        max_new_tokens = min(48, 2 * len(tokenizer(core)["input_ids"]) + 8)
        fitting = _fitting_prompts(model, tokenizer, core, 2 * count, max_new_tokens)
        if not fitting:
            LOGGER.warning(
                "prompt %r is too long for a few-shot paraphrase prompt; no model paraphrases", prompt
            )
        few_shot += fitting
        limits += [max_new_tokens] * len(fitting)
        owner += [index] * len(fitting)
    texts = (
        greedy_complete(model, tokenizer, few_shot, max_new_tokens=limits, batch_size=32) if few_shot else []
    )
    wrappers = [split_prompt(prompt)[1] for prompt, _, _ in requests]
    candidates: list[list[str]] = [[] for _ in requests]
    for index, text in zip(owner, texts, strict=True):
        candidates[index].append(wrappers[index].wrap(text) if wrappers[index] else text)
    return [
        filter_paraphrases(prompt, found, subject)[:count]
        for (prompt, subject, count), found in zip(requests, candidates, strict=True)
    ]
