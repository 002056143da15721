"""What counts as the model's answer: the first clause of a greedy completion, compared word by word.

The locality pool records the champion's answer to each reference prompt, and a generated paraphrase is
only an equivalent question if the champion answers it as it answers the original. Both need "the
answer" rather than a fixed number of tokens: "Hanoi, the capital of Vietnam" answers "Hanoi", and a
flip in the trailing words is not a changed answer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

from editing.core.generate import answer_matches, greedy_complete, normalise_words

# A clause ends at , ; : ! ? ( at a final full stop, or at a full stop after a word of 3+ letters
# followed by space, so initials and short abbreviations ("J. K. Rowling", "St. Louis") stay whole.
_CLAUSE_END = re.compile(r"[,;:!?(]|(?<=[A-Za-z]{3})\.(?=\s)|\.\s*$")


def first_clause(completion: str) -> str:
    """The answer part of a completion: its text up to the first clause boundary (all of it if the
    boundary would leave no words)."""
    match = _CLAUSE_END.search(completion)
    head = completion[: match.start()].strip() if match else completion.strip()
    return head if normalise_words(head) else completion.strip()


def same_answer(first: str, second: str) -> bool:
    """Whether two completions give the same answer: their first clauses match in both directions."""
    first, second = first_clause(first), first_clause(second)
    if not normalise_words(first) or not normalise_words(second):
        return False
    return answer_matches(first, second) and answer_matches(second, first)


def answer_changed(before: str, after: str) -> bool:
    """Whether a greedy answer changed under an edit: its words differ either way (text after the answer
    counts, unlike ``same_answer``). A completion without words (":", "...") is a real answer too, and
    is compared by its text."""
    if not normalise_words(before) or not normalise_words(after):
        return before.strip() != after.strip()
    return not (answer_matches(after, before) and answer_matches(before, after))


def answered_alike(
    model: nn.Module, tokenizer, prompt: str, candidates: Sequence[str], *, max_new_tokens: int = 8
) -> tuple[list[str], list[tuple[str, str]]]:
    """Split ``candidates`` into those ``model`` answers as it answers ``prompt`` and the rest, each
    rejected one with its reason. A reworded question the model answers in another form ("The capital
    of X is ..." instead of "X") cannot show whether an edit carried over to it."""
    if not candidates:
        return [], []
    answers = greedy_complete(model, tokenizer, [prompt, *candidates], max_new_tokens=max_new_tokens)
    return split_alike(answers[0], candidates, answers[1:])


def split_alike(
    reference: str, candidates: Sequence[str], answers: Sequence[str]
) -> tuple[list[str], list[tuple[str, str]]]:
    """``answered_alike`` once the answers are known: ``reference`` is the prompt's, ``answers`` the
    candidates' (so many prompts' candidates can be answered in one batch)."""
    kept, rejected = [], []
    for candidate, answer in zip(candidates, answers, strict=True):
        if same_answer(answer, reference):
            kept.append(candidate)
        else:
            rejected.append(
                (candidate, f"answered {first_clause(answer)!r}, the prompt {first_clause(reference)!r}")
            )
    return kept, rejected
