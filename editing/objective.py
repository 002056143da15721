"""The editor's training objective (paper eq. 3): after an edit, the equivalent input must produce the
new target (edit loss) and an unrelated input must keep its output distribution (locality loss).

Edits in a batch are independent: each example is edited on its own, exactly as at deployment, and the
batch loss is the mean over examples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from editing.editor import capture_edit_factors, compose_deltas, edited_weights, transform_factors
from editing.editor_net import MendNetwork
from editing.forward import scored_logits
from editing.losses import token_kl, token_nll
from editing.targets import EditScope
from editing.tokens import TokenBatch, collate
from editing.training_data import TrainingExample

PrefixFn = Callable[[TokenBatch], "tuple[str, int, torch.Tensor] | None"]


@dataclass(frozen=True)
class LossWeights:
    edit: float
    locality: float


def _accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return float((logits.argmax(dim=-1) == targets).float().mean()) if targets.numel() else float("nan")


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
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean over examples of ``weights.edit * NLL(target | rephrase) + weights.locality * KL(pre || post)``.

    Gradients flow into the network (and step sizes) through the edited weights; the base model and the
    captured factors are constants. ``with_rewrite`` also scores the edit prompt itself (validation).
    """
    device = next(model.parameters()).device
    edit_batch = collate([example.edit for example in examples], pad_id).to(device)
    captured = capture_edit_factors(model, scope, edit_batch, prefix_for(edit_batch))
    transformed = transform_factors(network, captured)
    row_example = captured.row_example

    locality_batch = collate([example.locality for example in examples], pad_id).to(device)
    with torch.no_grad():
        locality_before = scored_logits(model, locality_batch, prefix=prefix_for(locality_batch))

    total = torch.zeros((), device=device)
    sums = {"edit_loss": 0.0, "locality_kl": 0.0, "rephrase_acc": 0.0, "locality_unchanged": 0.0}
    if with_rewrite:
        sums["rewrite_acc"] = 0.0
    for index, example in enumerate(examples):
        deltas = compose_deltas(network, transformed, rows=row_example == index)
        sequences = [example.rephrase, example.locality] + ([example.edit] if with_rewrite else [])
        post_batch = collate(sequences, pad_id).to(device)
        logits = scored_logits(
            model, post_batch, weights=edited_weights(model, deltas), prefix=prefix_for(post_batch)
        )
        role, targets = post_batch.scored_example, post_batch.scored_targets
        edit_loss = token_nll(logits[role == 0], targets[role == 0]).mean()
        before = locality_before[locality_batch.scored_example == index]
        locality_kl = token_kl(before, logits[role == 1]).mean()
        total = total + weights.edit * edit_loss + weights.locality * locality_kl
        sums["edit_loss"] += float(edit_loss.detach())
        sums["locality_kl"] += float(locality_kl.detach())
        sums["rephrase_acc"] += _accuracy(logits[role == 0], targets[role == 0])
        sums["locality_unchanged"] += float(
            (logits[role == 1].argmax(-1) == before.argmax(-1)).float().mean()
        )
        if with_rewrite:
            sums["rewrite_acc"] += _accuracy(logits[role == 2], targets[role == 2])
    count = len(examples)
    metrics = {name: value / count for name, value in sums.items()}
    metrics["loss"] = float(total) / count
    return total / count, metrics
