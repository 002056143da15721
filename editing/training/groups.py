"""Training batches as groups of edits of the sizes fix runs see, often of one relation on purpose.

Each step draws one group size from ``sizes``. Small sizes give several groups (so that a step always
scores about ``scored_per_step`` examples); a large group is one update of many edits of which only
``scored_per_step`` are scored. With probability ``same_relation`` a group's edits share a relation
(``editing.data.relations``): the hard case for aggregation, where updates of related edits interfere.

Batches are a pure function of (seed, step), so a resumed run sees exactly the batches it would have.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence

from editing.data.training_data import TrainingExample
from editing.training.objective import EditGroup


class GroupSampler:
    def __init__(
        self,
        examples: Sequence[TrainingExample],
        *,
        sizes: Sequence[int],
        same_relation: float,
        scored_per_step: int,
        seed: int,
    ):
        if not examples:
            raise ValueError("no training examples to sample groups from")
        if not sizes or min(sizes) < 1:
            raise ValueError(f"group sizes must be positive, got {list(sizes)}")
        self.examples, self.sizes = list(examples), tuple(sizes)
        self.same_relation, self.scored_per_step, self.seed = same_relation, scored_per_step, seed
        members = defaultdict(list)
        for index, example in enumerate(self.examples):
            members[example.relation].append(index)
        self.by_relation = dict(members)

    def _group(self, rng: random.Random, size: int) -> list[int]:
        size = min(size, len(self.examples))
        if rng.random() < self.same_relation:
            relation = self.examples[rng.randrange(len(self.examples))].relation
            pool = self.by_relation[relation]
            chosen = rng.sample(pool, min(size, len(pool)))
            if len(chosen) < size:  # a small relation is topped up with other edits
                taken = set(chosen)
                others = [i for i in range(len(self.examples)) if i not in taken]
                chosen += rng.sample(others, size - len(chosen))
            return chosen
        return rng.sample(range(len(self.examples)), size)

    def groups(self, step: int) -> list[EditGroup]:
        """The groups of training step ``step`` (0-based)."""
        rng = random.Random(self.seed * 1_000_003 + step)
        size = rng.choice(self.sizes)
        count = max(1, self.scored_per_step // size)
        scored = max(1, min(size, self.scored_per_step // count))
        groups = []
        for _ in range(count):
            chosen = self._group(rng, size)
            groups.append(EditGroup(tuple(self.examples[i] for i in chosen), min(scored, len(chosen))))
        return groups


def relation_groups(examples: Sequence[TrainingExample], size: int) -> list[EditGroup]:
    """Validation groups: examples ordered by relation (stable), then cut into groups of ``size``, so
    most groups are same-relation batches; every member is scored."""
    ordered = sorted(examples, key=lambda example: example.relation)
    chunks = [tuple(ordered[start : start + size]) for start in range(0, len(ordered), size)]
    return [EditGroup(chunk, len(chunk)) for chunk in chunks]
