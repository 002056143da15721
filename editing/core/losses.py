"""Losses on scored positions: logits are always (scored, vocab), as produced by ``scored_logits``."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def per_example_mean(values: torch.Tensor, example: torch.Tensor, num_examples: int) -> torch.Tensor:
    """(examples,) mean of ``values`` (scored,) within each example, given each position's example index."""
    totals = torch.zeros(num_examples, dtype=values.dtype, device=values.device).index_add_(
        0, example, values
    )
    counts = torch.bincount(example, minlength=num_examples).clamp(min=1).to(values.dtype)
    return totals / counts


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(scored,) negative log-likelihood of each target token."""
    return F.cross_entropy(logits.float(), targets, reduction="none")


def masked_nll(
    logits: torch.Tensor, targets: torch.Tensor, example: torch.Tensor, num_examples: int
) -> torch.Tensor:
    """Mean over examples of each example's mean target-token NLL (long targets do not dominate)."""
    return per_example_mean(token_nll(logits, targets), example, num_examples).mean()


def token_kl(logits_before: torch.Tensor, logits_after: torch.Tensor) -> torch.Tensor:
    """(scored,) KL(before || after) of the next-token distributions at each position."""
    log_before = F.log_softmax(logits_before.float(), dim=-1)  # (scored, vocab)
    log_after = F.log_softmax(logits_after.float(), dim=-1)  # (scored, vocab)
    return (log_before.exp() * (log_before - log_after)).sum(dim=-1)
