"""The editor's training objective (paper eq. 3): after an edit, the equivalent input must produce the
new target (edit loss) and an unrelated input must keep its output distribution (locality loss). Examples
that carry general text add a second locality term over every scored position of that text.

A training batch is a list of groups. A group's edits are applied together, as one update under the
network's aggregation (``editing.mend.aggregation``), exactly as a fix run applies its edits; the first
``scored`` examples of each group are scored under that update (scoring every member of a group of 64
would cost 64 edited passes for one update). The batch loss is the mean over scored examples.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from editing.core.apply import named_parameters
from editing.core.forward import scored_hidden, scored_hidden_by_length
from editing.core.losses import per_example_mean, token_kl, token_nll
from editing.core.targets import EditScope
from editing.core.tokens import TokenBatch, collate
from editing.data.training_data import TrainingExample
from editing.mend.aggregation import ProtectedBasis
from editing.mend.editor import capture_edit_factors, key_rows, transform_factors
from editing.mend.editor_net import MendNetwork
from editing.mend.lowrank import group_factors, group_weights, low_rank_edits

PrefixFn = Callable[[TokenBatch], "tuple[str, int, torch.Tensor] | None"]
# A call cost that no padding outweighs: a pass of up to ``length_chunks``' row limit (256 sequences,
# several times a training step's) is one padded batch.
ONE_PADDED_BATCH = 10**12


@dataclass(frozen=True)
class LossWeights:
    edit: float
    locality: float
    general: float = 0.0  # KL on the examples' general text, where they carry one
    same_subject: float = 0.0  # KL on the edited subject's other facts, where examples carry one


# Roles of the sequences scored after an edit.
REPHRASE, LOCALITY, REWRITE, GENERAL, SAME_SUBJECT = range(5)
Protection = Mapping[str, tuple[ProtectedBasis, float]]


@dataclass(frozen=True)
class EditGroup:
    """Edits applied together as one update; the first ``scored`` of them are scored after it."""

    examples: tuple[TrainingExample, ...]
    scored: int

    def __post_init__(self) -> None:
        if not self.examples or not 1 <= self.scored <= len(self.examples):
            raise ValueError(f"a group of {len(self.examples)} edits cannot score {self.scored}")

    def sequences(self) -> list[list[int]]:
        """The token ids the objective runs: every member's edit prompt, and all of a scored member's."""
        scored = [ids for example in self.examples[: self.scored] for ids in example.sequences()]
        return scored + [example.edit[0] for example in self.examples[self.scored :]]


def consecutive_groups(examples: Sequence[TrainingExample], size: int) -> list[EditGroup]:
    """Consecutive examples in groups of ``size`` (the last may be smaller), every example scored."""
    chunks = [tuple(examples[start : start + size]) for start in range(0, len(examples), size)]
    return [EditGroup(chunk, len(chunk)) for chunk in chunks]


def _accuracy(predictions: torch.Tensor, targets: torch.Tensor, owner: torch.Tensor, count: int) -> float:
    """Mean over examples of each example's token accuracy."""
    return float(per_example_mean((predictions == targets).float(), owner, count).mean())


def editing_objective(
    model: nn.Module,
    scope: EditScope,
    network: MendNetwork,
    groups: Sequence[EditGroup],
    *,
    pad_id: int,
    prefix_for: PrefixFn,
    weights: LossWeights,
    with_rewrite: bool = False,
    batched: bool = True,
    edit_loss_on_prompt: bool = False,
    protection: Protection | None = None,
    length_chunking: bool = True,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean over scored examples of ``weights.edit * NLL(target | rephrase) + weights.locality * KL(pre ||
    post)`` (plus ``weights.general * KL`` on general text and ``weights.same_subject * KL`` on another
    fact of the edited subject, for examples that carry them), each example edited by its group's update.

    Gradients flow into the network (and step sizes and solver weights) through the update; the base
    model and the captured factors are constants. ``with_rewrite`` also scores the edit prompt itself
    (validation). ``batched`` runs every example's edited pass in one forward (``editing.mend.lowrank``);
    otherwise each example gets its own ``functional_call`` with ``W + delta`` (the reference; same result,
    slower). ``edit_loss_on_prompt`` adds the edit prompt itself to the equivalence inputs of the edit
    loss (the paper's neighbourhood N(x_e) contains x_e; see TrainConfig). ``protection`` holds each
    weight's protected basis and mean eigenvalue, for least-squares aggregation. ``length_chunking`` runs
    the post-edit pass in sub-batches of similar length (same result; False pads it to its longest
    sequence). The capture pass stays one padded batch: split, it would project onto the vocabulary once
    per sub-batch, and that projection (memory-bound at a few rows) costs more than the padding saved.
    """
    call_cost = None if length_chunking else ONE_PADDED_BATCH
    with_rewrite = with_rewrite or edit_loss_on_prompt
    device = next(model.parameters()).device
    members = [example for group in groups for example in group.examples]
    member_group = torch.tensor([g for g, group in enumerate(groups) for _ in group.examples], device=device)
    scored = [(g, example) for g, group in enumerate(groups) for example in group.examples[: group.scored]]
    count, edits = len(scored), len(members)
    # One pass gives every member's factors and, riding along, the scored examples' pre-edit logits.
    general_texts = [example.general for _, example in scored if example.general is not None]
    same_subject = [example.same_subject for _, example in scored if example.same_subject is not None]
    first_batch = collate(
        [e.edit for e in members] + [e.locality for _, e in scored] + general_texts + same_subject, pad_id
    ).to(device)
    captured = capture_edit_factors(model, scope, first_batch, prefix_for(first_batch), edit_examples=edits)
    transformed = transform_factors(network, captured)
    factors = group_factors(
        network, key_rows(network, captured, transformed), transformed,
        member_group[captured.row_example], len(groups), protection,
    )  # fmt: skip
    first_sequence = first_batch.scored_example  # (first-pass scored,)
    locality_before = captured.logits[(first_sequence >= edits) & (first_sequence < edits + count)]
    general_start, same_start = edits + count, edits + count + len(general_texts)
    general_before = captured.logits[(first_sequence >= general_start) & (first_sequence < same_start)]
    same_before = captured.logits[first_sequence >= same_start]  # (same-subject scored, vocab)

    # Each group is applied on its own, but the vocabulary projection (the costliest layer of a small
    # model, and memory-bound at a few rows) runs once for all scored examples' positions.
    if batched:
        hidden, role, owner, target = _batched_post_pass(
            model, network, factors, scored, pad_id, prefix_for, with_rewrite, call_cost
        )
    else:
        hidden, role, owner, target = _per_example_post_pass(
            model, network, factors, scored, pad_id, prefix_for, with_rewrite
        )
    logits = model.get_output_embeddings()(hidden)  # (scored, vocab)

    rephrase, locality, general = role == REPHRASE, role == LOCALITY, role == GENERAL
    equivalent = rephrase | (role == REWRITE) if edit_loss_on_prompt else rephrase
    edit_loss = per_example_mean(token_nll(logits[equivalent], target[equivalent]), owner[equivalent], count)
    locality_kl = per_example_mean(token_kl(locality_before, logits[locality]), owner[locality], count)
    # Examples without general text contribute zero here (per_example_mean of nothing).
    general_kl = per_example_mean(token_kl(general_before, logits[general]), owner[general], count)
    same = role == SAME_SUBJECT
    same_kl = per_example_mean(token_kl(same_before, logits[same]), owner[same], count)
    total = (
        weights.edit * edit_loss + weights.locality * locality_kl + weights.general * general_kl
        + weights.same_subject * same_kl
    ).mean()  # fmt: skip
    predictions = logits.detach().argmax(dim=-1)
    metrics = {
        "loss": float(total.detach()),
        "edit_loss": float(edit_loss.detach().mean()),
        "locality_kl": float(locality_kl.detach().mean()),
        "rephrase_acc": _accuracy(predictions[rephrase], target[rephrase], owner[rephrase], count),
        "locality_unchanged": _accuracy(
            predictions[locality], locality_before.argmax(dim=-1), owner[locality], count
        ),
        "group_edits": edits / len(groups),
    }
    if general_texts:
        metrics["general_kl"] = float(general_kl.detach().sum() / len(general_texts))
    if same_subject:
        metrics["same_subject_kl"] = float(same_kl.detach().sum() / len(same_subject))
        # Among the examples that carry a same-subject probe (the others would count as unchanged).
        unchanged = per_example_mean(
            (predictions[same] == same_before.argmax(dim=-1)).float(), owner[same], count
        )
        metrics["same_subject_unchanged"] = float(unchanged.sum() / len(same_subject))
    if with_rewrite:
        rewrite = role == REWRITE
        metrics["rewrite_acc"] = _accuracy(predictions[rewrite], target[rewrite], owner[rewrite], count)
    return total, metrics


def _example_sequences(
    example: TrainingExample, with_rewrite: bool
) -> list[tuple[tuple[list[int], int], int]]:
    """The sequences scored after ``example``'s edit, each with its role, in a fixed order."""
    chosen = [(example.rephrase, REPHRASE), (example.locality, LOCALITY)]
    if with_rewrite:
        chosen.append((example.edit, REWRITE))
    if example.general is not None:
        chosen.append((example.general, GENERAL))
    if example.same_subject is not None:
        chosen.append((example.same_subject, SAME_SUBJECT))
    return chosen


def _post_sequences(scored: Sequence[tuple[int, TrainingExample]], with_rewrite: bool):
    """The sequences scored after the edits, with the scored example, its group and the role of each."""
    sequences, owners, groups, roles = [], [], [], []
    for index, (group, example) in enumerate(scored):
        for sequence, sequence_role in _example_sequences(example, with_rewrite):
            sequences.append(sequence)
            owners.append(index)
            groups.append(group)
            roles.append(sequence_role)
    return sequences, owners, groups, roles


def _batched_post_pass(model, network, factors, scored, pad_id, prefix_for, with_rewrite, call_cost):
    sequences, owners, groups, roles = _post_sequences(scored, with_rewrite)
    device = next(model.parameters()).device
    sequence_group = torch.tensor(groups, device=device)

    def edits_of(rows: list[int]):
        """Each sequence of a sub-batch under its own group's update."""
        chosen = sequence_group[torch.as_tensor(rows, device=device)]
        updates = {name: (left[chosen], right[chosen]) for name, (left, right) in factors.items()}
        return low_rank_edits(model, network.layers, updates)

    # Prompts and general text differ in length several times over: sub-batches of similar length
    # spare the padding (same positions, same order as one padded batch).
    hidden, target, position_sequence = scored_hidden_by_length(
        model, sequences, pad_id, prefix_for=prefix_for, context_for=edits_of, call_cost=call_cost
    )  # (scored, hidden), (scored,), (scored,)
    role = torch.tensor(roles, device=device)[position_sequence]
    owner = torch.tensor(owners, device=device)[position_sequence]
    return hidden, role, owner, target


def _per_example_post_pass(model, network, factors, scored, pad_id, prefix_for, with_rewrite):
    device = next(model.parameters()).device
    parameters = named_parameters(model, list(factors))
    hidden, roles, owners, targets = [], [], [], []
    for index, (group, example) in enumerate(scored):
        sequences, sequence_roles = zip(*_example_sequences(example, with_rewrite), strict=True)
        batch = collate(list(sequences), pad_id).to(device)
        weights_after = group_weights(parameters, network.layers, factors, group)
        hidden.append(scored_hidden(model, batch, weights=weights_after, prefix=prefix_for(batch)))
        roles.append(torch.tensor(sequence_roles, device=device)[batch.scored_example])
        owners.append(torch.full_like(batch.scored_example, index))
        targets.append(batch.scored_targets)
    return torch.cat(hidden), torch.cat(roles), torch.cat(owners), torch.cat(targets)
