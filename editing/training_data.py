"""Training examples for the editor: each record's edit, equivalence (rephrase) and locality sequences."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from editing.data import EditRecord
from editing.tokens import encode_example

Encoded = tuple[list[int], int]  # token ids, index of the first scored token


@dataclass(frozen=True)
class TrainingExample:
    record_id: str
    edit: Encoded  # prompt -> target_new: the edit the editor is given
    rephrase: Encoded  # rephrase -> target_new: must hold after the edit
    locality: Encoded  # unrelated prompt -> its answer: must not change

    def sequences(self) -> tuple[list[int], list[int], list[int]]:
        return self.edit[0], self.rephrase[0], self.locality[0]


class TrainingDataError(ValueError):
    """A record cannot train the editor; names the record and the missing field."""


def encode_training_examples(tokenizer, records: Sequence[EditRecord]) -> list[TrainingExample]:
    """Tokenise once; every record needs a rephrase prompt and a locality probe."""
    examples = []
    for record in records:
        if not record.rephrase_prompts:
            raise TrainingDataError(f"record {record.record_id}: field 'rephrase_prompts' is empty")
        if not record.locality:
            raise TrainingDataError(f"record {record.record_id}: field 'locality' is empty")
        locality = record.locality[0]
        examples.append(
            TrainingExample(
                record.record_id,
                encode_example(tokenizer, record.prompt, record.target_new),
                encode_example(tokenizer, record.rephrase_prompts[0], record.target_new),
                encode_example(tokenizer, locality.prompt, locality.answer),
            )
        )
    return examples
