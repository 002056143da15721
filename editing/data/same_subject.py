"""Same-subject locality probes for a fix run's edits: the flagged subject's *other* facts, as the
champion answers them.

A neighbour probe asks about another subject; an edit can pass every neighbour probe and still rewrite
its own subject's other facts (edit where someone was born, and their nationality follows). For each
edit with a known subject, candidates are

* the locality pool's prompts that mention the subject (the champion's answers are already recorded);
* the first wording of every relation that fits the subject's kind (``relation_templates.json``; the kind
  is read from the edit's own prompt, ``edit_kinds``; none is asked when the prompt shows no kind), kept
  when the champion gives the first word of its answer with a probability of at least ``min_probability``
  (``editing.core.confidence``, ``FIRST_WORD``: a year the model guesses digit by digit is not a fact).

A candidate is dropped when the champion answers it as it answers the edit prompt (then it asks the
edited fact itself, in other words) or its answer gives the correction. Pool facts come first, then the
most confident template facts, ``per_edit`` in all. Edits without a subject get none ("where known").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from editing.core.confidence import FIRST_WORD, confident_answers
from editing.core.generate import answer_matches
from editing.data.edit_record import PromptAnswer
from editing.data.generator import SAME_SUBJECT_KIND
from editing.data.locality import mentions
from editing.data.protected_sources import normalise
from editing.data.relation_templates import SUBJECT, RelationTemplates, load_templates, subject_kinds
from editing.evaluation.answers import same_answer


@dataclass(frozen=True)
class SubjectEdit:
    prompt: str
    subject: str | None
    correction: str


def _other_fact(edit: SubjectEdit, reference: str, prompt: str, answer: str) -> bool:
    """Whether ``prompt`` -> ``answer`` is another fact of the subject, not the edited one reworded."""
    return (
        bool(answer.strip())
        and normalise(prompt) != normalise(edit.prompt)
        and not mentions(prompt, edit.correction)
        and not same_answer(answer, reference)
        and not answer_matches(answer, edit.correction)
    )


def edit_kinds(edit: SubjectEdit, templates: RelationTemplates) -> set[str]:
    """The kinds of the edit's subject that its own prompt shows: a subject cue in the prompt's template
    ("The official language of {}" marks a country), or a relation wording the template is ("The capital
    of {} is"). Empty when the prompt shows none: then no relation is asked of the subject, because asking
    a novel where it "lies on the continent of" gives the champion's guess, not a fact of the subject."""
    if not edit.subject or edit.subject not in edit.prompt:
        return set()
    kinds = set(subject_kinds([edit], templates.cues).get(edit.subject, ()))  # the generator's cue reading
    wording = normalise(edit.prompt.replace(edit.subject, SUBJECT, 1))
    kinds.update(
        relation.subject_kind
        for relation in templates.relations
        if any(normalise(candidate) == wording for candidate in relation.wordings)
    )
    return kinds


def same_subject_probes(
    model: nn.Module,
    tokenizer,
    edits: Sequence[SubjectEdit],
    pool: Sequence[PromptAnswer],
    *,
    per_edit: int,
    min_probability: float = 0.3,
    templates: RelationTemplates | None = None,
    batch_size: int = 64,
) -> list[list[PromptAnswer]]:
    """Per edit, up to ``per_edit`` same-subject probes (kind ``same_subject``) with the model's answers."""
    if per_edit < 0:
        raise ValueError(f"per_edit must be >= 0, got {per_edit}")
    known = [edit for edit in edits if edit.subject and edit.subject.strip()]
    if per_edit == 0 or not known:
        return [[] for _ in edits]
    templates = templates or load_templates()
    asked = [(position, relation.prompt(0, edit.subject)) for position, edit in enumerate(known)
             for relation in templates.for_kinds(edit_kinds(edit, templates))]  # fmt: skip
    references = confident_answers(
        model, tokenizer, [edit.prompt for edit in known], max_new_tokens=6, batch_size=batch_size
    )
    # Questions that cannot reach min_probability are screened out without decoding them.
    # A first word, not a first token: "Australia was first released in the year" -> "2014" starts with a
    # "2" that any year would, and a guessed year is no fact an edit must keep.
    templated = confident_answers(
        model, tokenizer, [question for _, question in asked], max_new_tokens=6, batch_size=batch_size,
        min_probability=min_probability, confidence=FIRST_WORD,
    )  # fmt: skip
    by_edit: dict[int, list[PromptAnswer]] = {}
    for position, edit in enumerate(known):
        reference = references[position][0]
        from_pool = [
            probe for probe in pool
            if mentions(probe.prompt, edit.subject) and _other_fact(edit, reference, probe.prompt, probe.answer)
        ]  # fmt: skip
        offered = [(question, answer) for (owner, question), answer in zip(asked, templated, strict=True)
                   if owner == position]  # fmt: skip
        confident = sorted(
            ((prompt, answer, probability) for prompt, (answer, probability) in offered
             if probability >= min_probability and _other_fact(edit, reference, prompt, answer)),
            key=lambda item: -item[2],
        )  # fmt: skip
        chosen = [PromptAnswer(p.prompt, p.answer, SAME_SUBJECT_KIND) for p in from_pool]
        chosen += [PromptAnswer(prompt, answer, SAME_SUBJECT_KIND) for prompt, answer, _ in confident]
        by_edit[id(edit)] = list({normalise(p.prompt): p for p in chosen}.values())[:per_edit]
    return [by_edit.get(id(edit), []) for edit in edits]
