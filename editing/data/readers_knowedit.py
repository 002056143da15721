"""Readers for the six KnowEdit subsets, each in the field names it is published with.

Field names come from the published sources, not from guesses:

* the ZsRE, WikiData_recent, WikiData_counterfact, WikiBio and Sanitation layouts: "The Composition of
  Dataset" in zjunlp/EasyEdit ``examples/KnowEdit.md`` (also the zjunlp/KnowEdit dataset card);
* ``rephrase`` read as well as ``rephrase_prompt``, and WikiBio's ``text`` / ``labels`` / ``concept`` in
  the places of ``prompt`` / ``target_new`` / ``subject``: EasyEdit ``easyeditor/dataset/knowedit.py``;
* ConvSent (``blender_*.json``: ``ent``, ``pos``, ``neg``) and its question templates: eric-mitchell/serac
  ``data_classes/sentiment.py`` and EasyEdit ``examples/run_convsent_llama2.py``;
* Sanitation (``trivia_qa_test.json``: ``success`` / ``locality``; ``trivia_qa_train.json``: ``K_F`` /
  ``K_R``; items ``question`` / ``ground_truth`` / ``target_new``) and its prompt template: EasyEdit
  ``examples/run_santinization_llama2.py`` and ``easyeditor/dataset/sanitization.py``.

ZsRE, WikiData_counterfact and WikiData_recent share one layout and differ in what they must have:
ZsRE a rephrase, WikiData_counterfact the old answer (``ground_truth``), WikiData_recent neither (it
inserts new facts). Ground truths may be strings, alias lists or lists of alias lists
(``FieldReader.answers``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from editing.data.edit_record import EditRecord, FieldReader, PromptAnswer, RecordError, Source, dedupe

# serac data_classes/sentiment.py: the first three question templates (the rest vary "What is your X of").
CONVSENT_TEMPLATES = ("What do you think of {}?", "What do you feel about {}?", "How do you view {}?")
# run_santinization_llama2.py asks every question, forgotten or retained, in this template.
SANITATION_TEMPLATE = "Question:{}\nAnswer:"
# (edited list, retained list) of the test and the train split.
SANITATION_SPLITS = (("success", "locality"), ("K_F", "K_R"))


def _fact_record(
    fields: FieldReader, source: Source, *, rephrase_required: bool, ground_truth_required: bool
) -> list[EditRecord]:
    targets = fields.answers("target_new")
    ground_truth = (
        fields.answers("ground_truth") if ground_truth_required else fields.optional_answers("ground_truth")
    )
    rephrases = dedupe((*fields.texts("rephrase_prompt"), *fields.texts("rephrase")))
    if rephrase_required and not rephrases:
        raise fields.fail("rephrase_prompt", "missing (and no 'rephrase' either)")
    return [
        EditRecord(
            record_id=f"{source.format_name}-{fields.index}",
            prompt=fields.text("prompt"),
            target_new=targets[0],
            target_aliases=targets[1:],
            target_true=ground_truth[0] if ground_truth else None,
            subject=fields.optional_text("subject"),
            rephrase_prompts=rephrases,
            locality=fields.probes("locality"),
            portability=fields.probes("portability"),
        )
    ]


def parse_zsre(fields: FieldReader, source: Source) -> list[EditRecord]:
    """KnowEdit ZsRE: a question with its rephrase; same-subject locality; portability probes."""
    return _fact_record(fields, source, rephrase_required=True, ground_truth_required=False)


def parse_wikidata_counterfact(fields: FieldReader, source: Source) -> list[EditRecord]:
    """WikiData_counterfact: a counterfactual for a fact the data states (``ground_truth``)."""
    return _fact_record(fields, source, rephrase_required=False, ground_truth_required=True)


def parse_wikidata_recent(fields: FieldReader, source: Source) -> list[EditRecord]:
    """WikiData_recent: a fact newer than the model, so usually no old answer."""
    return _fact_record(fields, source, rephrase_required=False, ground_truth_required=False)


def parse_wikibio(fields: FieldReader, source: Source) -> list[EditRecord]:
    """WikiBio: a biography passage (``text``) continued by its next sentence (``labels``)."""
    return [
        EditRecord(
            record_id=f"{source.format_name}-{fields.index}",
            prompt=fields.text("text"),
            target_new=fields.text("labels"),
            subject=fields.optional_text("concept"),
            locality=fields.probes("locality"),
            portability=fields.probes("portability"),
        )
    ]


def _sentiment_sentences(fields: FieldReader) -> dict[str, tuple[str, ...]]:
    sentences = {name: fields.texts(name) for name in ("pos", "neg")}
    for name, values in sentences.items():
        if not values:
            raise fields.fail(name, "missing")
    return sentences


def parse_convsent(fields: FieldReader, source: Source) -> list[EditRecord]:
    """ConvSent: make the model's opinion of a topic positive (or negative); any such sentence counts."""
    topic = fields.text("ent")
    sentences = _sentiment_sentences(fields)
    # The published scripts draw each record's target sentiment at random. Alternating keeps a file's
    # records the same on every read and both directions equally common.
    targets = sentences["pos" if fields.index % 2 == 0 else "neg"]
    locality: tuple[PromptAnswer, ...] = ()
    neighbour_index = (fields.index + 1) % len(source.items)
    if neighbour_index != fields.index:
        # As in the published evaluation, the next topic's answers must not move; any of its sentences
        # is a right answer there (accuracy), and "unchanged" compares predictions.
        neighbour = FieldReader(source.path, neighbour_index, source.items[neighbour_index])
        neighbour_sentences = _sentiment_sentences(neighbour)
        answers = dedupe((*neighbour_sentences["pos"], *neighbour_sentences["neg"]))
        prompt = CONVSENT_TEMPLATES[0].format(neighbour.text("ent"))
        locality = (PromptAnswer(prompt, answers[0], "other_topic", answers[1:]),)
    return [
        EditRecord(
            record_id=f"{source.format_name}-{fields.index}",
            prompt=CONVSENT_TEMPLATES[0].format(topic),
            target_new=targets[0],
            target_aliases=targets[1:],
            subject=topic,
            rephrase_prompts=tuple(template.format(topic) for template in CONVSENT_TEMPLATES[1:]),
            locality=locality,
        )
    ]


def unpack_sanitation(path: Path, data: Any) -> tuple[list[Any], dict[str, Any]]:
    """The questions to forget are the items; the retained questions are shared by all of them."""
    if isinstance(data, dict):
        for edited, retained in SANITATION_SPLITS:
            if edited in data and retained in data:
                for name in (edited, retained):
                    if not isinstance(data[name], list):
                        raise RecordError(path, 0, name, f"expected a list, got {type(data[name]).__name__}")
                return data[edited], {"retained": data[retained], "retained_field": retained}
    raise RecordError(
        path, 0, "<file>", "expected a JSON object with 'success' and 'locality' lists (or 'K_F' and 'K_R')"
    )


def parse_sanitation(fields: FieldReader, source: Source) -> list[EditRecord]:
    """Sanitation: answer "I don't know." to a question, keep answering the retained ones."""
    retained, name = source.shared["retained"], source.shared["retained_field"]
    probes = []
    # All questions to forget are edited as one batch in the published protocol, and the retained
    # questions belong to none of them. Record i takes retained questions i, i + n, i + 2n, ... so that
    # each is scored exactly once over the file.
    for position in range(fields.index, len(retained), len(source.items)):
        item = FieldReader(source.path, fields.index, retained[position], f"{name}[{position}].")
        question = SANITATION_TEMPLATE.format(item.text("question"))
        probes.append(PromptAnswer(question, item.text("ground_truth"), "retained"))
    return [
        EditRecord(
            record_id=f"{source.format_name}-{fields.index}",
            prompt=SANITATION_TEMPLATE.format(fields.text("question")),
            target_new=fields.text("target_new"),
            target_true=fields.text("ground_truth"),
            subject=fields.optional_text("subject"),
            locality=tuple(probes),
        )
    ]
