"""Training examples for the editor: each record's edit, equivalence (rephrase) and locality sequences,
and optionally a stretch of general text that no edit may disturb."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from editing.core.tokens import encode_example
from editing.data.edit_record import SAME_SUBJECT_KINDS
from editing.data.records import EditRecord, PromptAnswer
from editing.data.relations import relation_labels

Encoded = tuple[list[int], int]  # token ids, index of the first scored token


def split_locality(probes: Sequence[PromptAnswer]) -> tuple[list[PromptAnswer], list[PromptAnswer]]:
    """(neighbour probes: about other subjects, same-subject probes: the edited subject's other facts)."""
    neighbours = [probe for probe in probes if probe.kind not in SAME_SUBJECT_KINDS]
    return neighbours, [probe for probe in probes if probe.kind in SAME_SUBJECT_KINDS]


@dataclass(frozen=True)
class TrainingExample:
    record_id: str
    edit: Encoded  # prompt -> target_new: the edit the editor is given
    rephrase: Encoded  # rephrase -> target_new: must hold after the edit
    locality: Encoded  # unrelated prompt -> its answer: must not change
    # General text whose next-token distributions must not change at any scored position. Locality
    # probes cover a few answer tokens; this keeps the (summed) update off ordinary text as well.
    general: Encoded | None = None
    relation: str = ""  # records with equal labels share a relation (editing.data.relations)
    # Another fact of the edited subject (KnowEdit's Relation_Specificity): editing where someone was
    # born must leave their nationality alone. None when the record has no such probe.
    same_subject: Encoded | None = None

    def sequences(self) -> tuple[list[int], ...]:
        optional = (self.general, self.same_subject)
        return (self.edit[0], self.rephrase[0], self.locality[0], *(item[0] for item in optional if item))


class TrainingDataError(ValueError):
    """A record cannot train the editor; names the record and the missing field."""


def encode_training_examples(tokenizer, records: Sequence[EditRecord]) -> list[TrainingExample]:
    """Tokenise once; every record needs a rephrase prompt and a locality probe."""
    examples = []
    for record, relation in zip(records, relation_labels(records), strict=True):
        if not record.rephrase_prompts:
            raise TrainingDataError(f"record {record.record_id}: field 'rephrase_prompts' is empty")
        if not record.locality:
            raise TrainingDataError(f"record {record.record_id}: field 'locality' is empty")
        neighbours, same_subject = split_locality(record.locality)
        # A record whose only probes are same-subject ones (KnowEdit) uses the first as its locality too.
        locality = (neighbours or same_subject)[0]
        examples.append(
            TrainingExample(
                record.record_id,
                encode_example(tokenizer, record.prompt, record.target_new),
                encode_example(tokenizer, record.rephrase_prompts[0], record.target_new),
                encode_example(tokenizer, locality.prompt, locality.answer),
                relation=relation,
                same_subject=(
                    encode_example(tokenizer, same_subject[0].prompt, same_subject[0].answer)
                    if same_subject
                    else None
                ),
            )
        )
    return examples


def encode_general_text(tokenizer, text: str, *, max_tokens: int, scored_tokens: int) -> Encoded:
    """The first ``max_tokens`` tokens of ``text``, scoring the last ``scored_tokens`` of them (at least
    the second token): later positions see more context, and scoring fewer keeps the vocabulary
    projection, the costliest layer here, cheap."""
    ids = tokenizer(text, add_special_tokens=True)["input_ids"][:max_tokens]
    if len(ids) < 2:
        raise TrainingDataError(f"general text {text[:40]!r} has fewer than two tokens")
    return ids, max(1, len(ids) - scored_tokens)


def with_general_texts(
    tokenizer,
    examples: Sequence[TrainingExample],
    texts: Sequence[str],
    *,
    max_tokens: int = 32,
    scored_tokens: int = 16,
) -> list[TrainingExample]:
    """Each example paired with one general text, round robin, so the pairing (and the prefix cache's
    keys) stays fixed across epochs. Texts shorter than two tokens are an error, never skipped."""
    if not texts:
        raise TrainingDataError("no general texts given")
    encoded = [
        encode_general_text(tokenizer, text, max_tokens=max_tokens, scored_tokens=scored_tokens)
        for text in texts[: len(examples)]
    ]
    return [replace(example, general=encoded[index % len(encoded)]) for index, example in enumerate(examples)]
