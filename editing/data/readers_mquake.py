"""MQuAKE (princeton-nlp/MQuAKE: ``datasets/MQuAKE-CF-3k.json``, ``MQuAKE-CF.json``, ``MQuAKE-T.json``).

Field names are those of the repository's README ("Data format"). A case holds one to four edited facts
(``requested_rewrite``, CounterFact-style: a cloze ``prompt`` with ``{}`` for the ``subject``,
``target_new`` / ``target_true`` as ``{"str", "id"}``, and a ``question`` asking the same fact) and
multi-hop ``questions`` whose answer becomes ``new_answer`` only when all of the case's facts are edited.

Each case becomes one record per requested rewrite, all in one ``edit_group`` so that single-edit
evaluation applies the case's facts together, as MQuAKE evaluates them. The case's first record carries
the checks that belong to the whole case:

* portability: every multi-hop question, answered by ``new_answer`` or any of ``new_answer_alias``;
* locality: the chain's single hops that the edits leave as they were (``single_hops[i]`` and
  ``new_single_hops[i]`` with the same cloze and answer), asked as their cloze, with ``answer_alias``.

Not read: ``answer`` / ``answer_alias`` / MQuAKE-T's ``answer_extended`` (the multi-hop answer before the
edit, which no metric here scores) and ``orig`` (the raw Wikidata triples).
"""

from __future__ import annotations

from editing.data.edit_record import EditRecord, FieldReader, PromptAnswer, Source, dedupe


def _hops(fields: FieldReader, name: str) -> list[tuple[str, tuple[str, ...]]]:
    """(cloze, answer and aliases) of each single hop."""
    hops = []
    for hop in fields.items(name):
        answers = dedupe((hop.text("answer"), *hop.texts("answer_alias", allow_empty=True)))
        hops.append((hop.text("cloze"), answers))
    return hops


def _unchanged_hops(fields: FieldReader) -> tuple[PromptAnswer, ...]:
    """Hops whose fact is the same before and after the edits: what the edits must not change."""
    before, after = _hops(fields, "single_hops"), _hops(fields, "new_single_hops")
    return tuple(
        PromptAnswer(cloze, answers[0], "unchanged_hop", answers[1:])
        for (cloze, answers), (new_cloze, new_answers) in zip(before, after, strict=False)
        if cloze == new_cloze and answers[0] == new_answers[0]
    )


def _multi_hop(fields: FieldReader) -> tuple[PromptAnswer, ...]:
    questions = fields.texts("questions")
    if not questions:
        raise fields.fail("questions", "missing")
    answers = dedupe((fields.text("new_answer"), *fields.texts("new_answer_alias", allow_empty=True)))
    return tuple(PromptAnswer(question, answers[0], "multi_hop", answers[1:]) for question in questions)


def _rewrite_prompt(rewrite: FieldReader) -> str:
    template, subject = rewrite.text("prompt"), rewrite.text("subject")
    if "{}" not in template:
        raise rewrite.fail("prompt", "expected a '{}' placeholder for the subject")
    # replace, not format: a prompt may hold other braces.
    return template.replace("{}", subject)


def parse_case(fields: FieldReader, source: Source) -> list[EditRecord]:
    """One MQuAKE case: a record per requested rewrite, sharing the case's edit group."""
    group = f"{source.format_name}-{fields.raw.get('case_id', fields.index)}"
    rewrites = fields.items("requested_rewrite")
    portability, locality = _multi_hop(fields), _unchanged_hops(fields)
    records = []
    for position, rewrite in enumerate(rewrites):
        first = position == 0
        records.append(
            EditRecord(
                record_id=f"{group}-{position}",
                prompt=_rewrite_prompt(rewrite),
                target_new=rewrite.child("target_new").text("str"),
                target_true=rewrite.child("target_true").text("str"),
                subject=rewrite.text("subject"),
                rephrase_prompts=(rewrite.text("question"),),
                locality=locality if first else (),
                portability=portability if first else (),
                edit_group=group,
            )
        )
    return records
