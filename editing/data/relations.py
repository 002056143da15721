"""Which edits share a relation, inferred from the records themselves.

A fix run's flags are often one relation ("The capital of X is"), and same-relation edits are what an
aggregation must keep apart, so the editor trains on such groups on purpose. CounterFact as published in
the EasyEdit splits carries no relation id, but two facts of it reveal the relation:

* a record's *template* is its prompt with the subject cut out ("The mother tongue of {} is");
* its locality prompt is a neighbour: another subject under the same relation, often in another of that
  relation's templates ("{} is a native speaker of").

Templates linked through neighbours are merged (union-find), which recovers relations across wordings.
A record whose prompt does not contain its subject is a relation of its own (nothing is guessed).
"""

from __future__ import annotations

from collections.abc import Sequence

from editing.data.records import EditRecord

SUBJECT = "{}"


def template(record: EditRecord) -> str:
    """The prompt with its (first occurrence of the) subject replaced by ``{}``, or the prompt itself."""
    if record.subject and record.subject in record.prompt:
        return record.prompt.replace(record.subject, SUBJECT, 1)
    return record.prompt


def _matching_template(prompt: str, templates: Sequence[tuple[str, str, str]]) -> str | None:
    """The most specific template (longest fixed text) that ``prompt`` fills with a non-empty subject."""
    best, best_length = None, -1
    for name, prefix, suffix in templates:
        fixed = len(prefix) + len(suffix)
        if (
            len(prompt) > fixed
            and prompt.startswith(prefix)
            and prompt.endswith(suffix)
            and fixed > best_length
        ):
            best, best_length = name, fixed
    return best


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, item: str) -> str:
        self.parent.setdefault(item, item)
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]  # path halving
            item = self.parent[item]
        return item

    def union(self, first: str, second: str) -> None:
        self.parent[self.find(first)] = self.find(second)


def relation_labels(records: Sequence[EditRecord]) -> list[str]:
    """One label per record; records with equal labels share a relation (by template and neighbours)."""
    own = [template(record) for record in records]
    templated = sorted({name for name in own if SUBJECT in name})
    parts = [(name, *name.split(SUBJECT, 1)) for name in templated]
    # Fixed text shorter than a few characters ("{}, the") matches too many prompts to link relations.
    linkable = [part for part in parts if len(part[1]) + len(part[2]) >= 6]
    groups = _UnionFind()
    for record, name in zip(records, own, strict=True):
        groups.find(name)
        if SUBJECT not in name:
            continue
        for probe in record.locality:
            neighbour = _matching_template(probe.prompt, linkable)
            if neighbour is not None:
                groups.union(name, neighbour)
    roots = {root: index for index, root in enumerate(sorted({groups.find(name) for name in own}))}
    return [f"relation-{roots[groups.find(name)]}" for name in own]
