"""Edit-quality metrics as pure functions on scored-position tensors (EasyEdit's definitions).

Every function takes tensors in the layout ``scored_logits`` produces: one row per scored position, in
``TokenBatch.scored_targets`` order, with ``example`` (``TokenBatch.scored_example``) saying which
example each position belongs to. Per-example results are reduced with ``per_example_mean`` so a long
target does not outweigh a short one.

* token accuracy: mean over a target's tokens of ``argmax == target token`` (teacher forced);
* exact match: every target token is the argmax;
* locality: fraction of a locality probe's answer-position argmax tokens that an edit leaves unchanged,
  and the mean KL(pre || post) of the next-token distributions at those positions;
* accuracy drawdown: a probe's accuracy against its ground truth before the edit minus after;
* perplexity: ``exp`` of the token-weighted mean NLL.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from editing.core.losses import per_example_mean, token_kl

# RATES: shares of counts are computed in float64. In float32, 23/24 reads 0.95833331, and a gate's mean
# of such rates can land a few 1e-9 under a threshold that the exact share meets (a fix run's mean
# neighbour locality of exactly 19/20 read 0.9499999970 and failed ">= 0.95").


def token_correct(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(scored,) bool: the argmax of each position's logits is its target token."""
    return logits.argmax(dim=-1) == targets


def token_accuracy(
    logits: torch.Tensor, targets: torch.Tensor, example: torch.Tensor, num_examples: int
) -> torch.Tensor:
    """(examples,) teacher-forced token accuracy of each example's target, in float64 (see RATES)."""
    return per_example_mean(token_correct(logits, targets).double(), example, num_examples)


def exact_match(
    logits: torch.Tensor, targets: torch.Tensor, example: torch.Tensor, num_examples: int
) -> torch.Tensor:
    """(examples,) bool: all of an example's target tokens are predicted (teacher forced)."""
    wrong = (~token_correct(logits, targets)).long()
    misses = torch.zeros(num_examples, dtype=torch.long, device=wrong.device).index_add_(0, example, wrong)
    return misses == 0


def unchanged_fraction(
    predictions_before: torch.Tensor,
    predictions_after: torch.Tensor,
    example: torch.Tensor,
    num_examples: int,
) -> torch.Tensor:
    """(examples,) fraction of each example's positions whose argmax token the edit did not change, in
    float64 (see RATES)."""
    same = (predictions_before == predictions_after).double()
    return per_example_mean(same, example, num_examples)


def mean_kl(
    logits_before: torch.Tensor, logits_after: torch.Tensor, example: torch.Tensor, num_examples: int
) -> torch.Tensor:
    """(examples,) mean over each example's positions of KL(before || after).

    Log-probabilities work as well as logits: ``token_kl`` normalises with ``log_softmax`` either way.
    """
    return per_example_mean(token_kl(logits_before, logits_after), example, num_examples)


def accuracy_drawdown(accuracy_before: torch.Tensor, accuracy_after: torch.Tensor) -> torch.Tensor:
    """Accuracy against the ground truth before the edit minus after; positive means the edit hurt."""
    return accuracy_before - accuracy_after


def perplexity(nll_sum: float, token_count: int) -> float:
    """``exp`` of the token-weighted mean NLL, from a summed NLL and the number of tokens it covers."""
    if token_count <= 0:
        raise ValueError("perplexity needs at least one scored token")
    return math.exp(nll_sum / token_count)


def mean_or_none(values: Iterable[float | None]) -> float | None:
    """Mean of the values that are present; ``None`` when none are (e.g. no portability probes)."""
    present = [float(value) for value in values if value is not None]
    return sum(present) / len(present) if present else None
