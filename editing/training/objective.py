"""The editor's training objective (paper eq. 3): after an edit, the equivalent input must produce the
new target (edit loss) and an unrelated input must keep its output distribution (locality loss). Examples
that carry general text add a second locality term over every scored position of that text.

Edits in a batch are independent: each example is edited on its own, exactly as at deployment, and the
batch loss is the mean over examples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from editing.core.forward import scored_hidden
from editing.core.losses import per_example_mean, token_kl, token_nll
from editing.core.targets import EditScope
from editing.core.tokens import TokenBatch, collate
from editing.data.training_data import TrainingExample
from editing.mend.editor import capture_edit_factors, edited_weights, transform_factors
from editing.mend.editor_net import MendNetwork
from editing.mend.lowrank import low_rank_edits, per_example_updates

PrefixFn = Callable[[TokenBatch], "tuple[str, int, torch.Tensor] | None"]


@dataclass(frozen=True)
class LossWeights:
    edit: float
    locality: float
    general: float = 0.0  # KL on the examples' general text, where they carry one


# Roles of the sequences scored after an edit.
REPHRASE, LOCALITY, REWRITE, GENERAL = range(4)


def _accuracy(predictions: torch.Tensor, targets: torch.Tensor, owner: torch.Tensor, count: int) -> float:
    """Mean over examples of each example's token accuracy."""
    return float(per_example_mean((predictions == targets).float(), owner, count).mean())


def editing_objective(
    model: nn.Module,
    scope: EditScope,
    network: MendNetwork,
    examples: Sequence[TrainingExample],
    *,
    pad_id: int,
    prefix_for: PrefixFn,
    weights: LossWeights,
    with_rewrite: bool = False,
    batched: bool = True,
    edit_loss_on_prompt: bool = False,
    edits_per_update: int = 1,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean over examples of ``weights.edit * NLL(target | rephrase) + weights.locality * KL(pre || post)``
    (plus ``weights.general * KL`` on general text, for examples that carry one).

    Gradients flow into the network (and step sizes) through the edited weights; the base model and the
    captured factors are constants. ``with_rewrite`` also scores the edit prompt itself (validation).
    ``batched`` runs every example's edited pass in one forward (``editing.mend.lowrank``); otherwise each
    example gets its own ``functional_call`` with ``W + delta`` (the reference; same result, slower).
    ``edit_loss_on_prompt`` adds the edit prompt itself to the equivalence inputs of the edit loss
    (the paper's neighbourhood N(x_e) contains x_e; see TrainConfig).
    ``edits_per_update`` composes consecutive examples' edits into one summed update, and scores each
    example under its group's update: how a fix run applies its edits (the paper's batched editing).
    """
    with_rewrite = with_rewrite or edit_loss_on_prompt
    device = next(model.parameters()).device
    count = len(examples)
    # One pass gives the edits' factors and, riding along, the locality prompts' pre-edit logits.
    general_texts = [e.general for e in examples if e.general is not None]
    first_batch = collate(
        [e.edit for e in examples] + [e.locality for e in examples] + general_texts, pad_id
    ).to(device)
    captured = capture_edit_factors(model, scope, first_batch, prefix_for(first_batch), edit_examples=count)
    transformed = transform_factors(network, captured)
    # Factor rows (and below, scored sequences) belong to their example's group, so that every example
    # in a group is scored under the sum of the group's edits.
    row_group = captured.row_example // edits_per_update  # (rows,) group of each factor row
    first_sequence = first_batch.scored_example  # (first-pass scored,)
    locality_before = captured.logits[(first_sequence >= count) & (first_sequence < 2 * count)]
    general_before = captured.logits[first_sequence >= 2 * count]  # (general scored, vocab)

    # Each example (or group) is edited on its own, but the vocabulary projection (the costliest layer
    # of a small model, and memory-bound at a few rows) runs once for all examples' scored positions.
    post_pass = _batched_post_pass if batched else _per_example_post_pass
    hidden, role, owner, target = post_pass(
        model, network, transformed, row_group, examples, pad_id, prefix_for, with_rewrite, edits_per_update
    )
    logits = model.get_output_embeddings()(hidden)  # (scored, vocab)

    rephrase, locality, general = role == REPHRASE, role == LOCALITY, role == GENERAL
    equivalent = rephrase | (role == REWRITE) if edit_loss_on_prompt else rephrase
    edit_loss = per_example_mean(token_nll(logits[equivalent], target[equivalent]), owner[equivalent], count)
    locality_kl = per_example_mean(token_kl(locality_before, logits[locality]), owner[locality], count)
    # Examples without general text contribute zero here (per_example_mean of nothing).
    general_kl = per_example_mean(token_kl(general_before, logits[general]), owner[general], count)
    total = (weights.edit * edit_loss + weights.locality * locality_kl + weights.general * general_kl).mean()
    predictions = logits.detach().argmax(dim=-1)
    metrics = {
        "loss": float(total.detach()),
        "edit_loss": float(edit_loss.detach().mean()),
        "locality_kl": float(locality_kl.detach().mean()),
        "rephrase_acc": _accuracy(predictions[rephrase], target[rephrase], owner[rephrase], count),
        "locality_unchanged": _accuracy(
            predictions[locality], locality_before.argmax(dim=-1), owner[locality], count
        ),
    }
    if general_texts:
        metrics["general_kl"] = float(general_kl.detach().sum() / len(general_texts))
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
    return chosen


def _post_sequences(examples: Sequence[TrainingExample], with_rewrite: bool):
    """The sequences scored after the edits, with the example and the role of each."""
    sequences, owners, roles = [], [], []
    for index, example in enumerate(examples):
        for sequence, sequence_role in _example_sequences(example, with_rewrite):
            sequences.append(sequence)
            owners.append(index)
            roles.append(sequence_role)
    return sequences, owners, roles


def _batched_post_pass(
    model, network, transformed, row_group, examples, pad_id, prefix_for, with_rewrite, group_size
):
    sequences, owners, roles = _post_sequences(examples, with_rewrite)
    device = row_group.device
    batch = collate(sequences, pad_id).to(device)
    sequence_example = torch.tensor(owners, device=device)
    groups = -(-len(examples) // group_size)  # ceil: the last group may be smaller
    updates = per_example_updates(network, transformed, row_group, groups, sequence_example // group_size)
    with low_rank_edits(model, network.layers, updates):
        hidden = scored_hidden(model, batch, prefix=prefix_for(batch))  # (scored, hidden)
    position_sequence = batch.scored_example
    role = torch.tensor(roles, device=device)[position_sequence]
    return hidden, role, sequence_example[position_sequence], batch.scored_targets


def _per_example_post_pass(
    model, network, transformed, row_group, examples, pad_id, prefix_for, with_rewrite, group_size
):
    device = row_group.device
    hidden, roles, owners, targets = [], [], [], []
    for index, example in enumerate(examples):
        sequences, sequence_roles = zip(*_example_sequences(example, with_rewrite), strict=True)
        batch = collate(list(sequences), pad_id).to(device)
        weights_after = edited_weights(model, network, transformed, rows=row_group == index // group_size)
        hidden.append(scored_hidden(model, batch, weights=weights_after, prefix=prefix_for(batch)))
        roles.append(torch.tensor(sequence_roles, device=device)[batch.scored_example])
        owners.append(torch.full_like(batch.scored_example, index))
        targets.append(batch.scored_targets)
    return torch.cat(hidden), torch.cat(roles), torch.cat(owners), torch.cat(targets)
