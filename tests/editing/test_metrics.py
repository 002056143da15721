"""Every metric function against cases computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from editing.evaluation.metrics import (
    accuracy_drawdown,
    exact_match,
    mean_kl,
    mean_or_none,
    perplexity,
    token_accuracy,
    token_correct,
    unchanged_fraction,
)

# Three scored positions over a 3-token vocabulary: argmaxes are 1, 0, 2.
LOGITS = torch.tensor([[0.0, 1.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
TARGETS = torch.tensor([1, 0, 1])  # right, right, wrong


def test_token_correct():
    assert token_correct(LOGITS, TARGETS).tolist() == [True, True, False]


@pytest.mark.parametrize(
    ("example", "expected"),
    [
        ([0, 0, 0], [2 / 3]),
        ([0, 0, 1], [1.0, 0.0]),
        ([0, 1, 1], [1.0, 0.5]),
    ],
)
def test_token_accuracy_is_per_example(example, expected):
    result = token_accuracy(LOGITS, TARGETS, torch.tensor(example), len(expected))
    assert result.tolist() == pytest.approx(expected)


@pytest.mark.parametrize(
    ("example", "expected"),
    [
        ([0, 0, 0], [False]),
        ([0, 0, 1], [True, False]),
        ([0, 1, 1], [True, False]),
        ([1, 1, 0], [False, True]),
    ],
)
def test_exact_match_needs_every_token(example, expected):
    assert exact_match(LOGITS, TARGETS, torch.tensor(example), len(expected)).tolist() == expected


def test_unchanged_fraction():
    before = torch.tensor([1, 2, 3, 4, 5])
    after = torch.tensor([1, 0, 3, 4, 0])
    result = unchanged_fraction(before, after, torch.tensor([0, 0, 1, 1, 2]), 3)
    assert result.tolist() == pytest.approx([0.5, 1.0, 0.0])


def test_mean_kl():
    # Position 0: p = (1/2, 1/2), q = (1/4, 3/4): KL = 1/2 ln 2 + 1/2 ln(2/3) = 1/2 ln(4/3).
    # Position 1: identical distributions: KL = 0.
    before = torch.log(torch.tensor([[0.5, 0.5], [0.9, 0.1]]))
    after = torch.log(torch.tensor([[0.25, 0.75], [0.9, 0.1]]))
    expected = 0.5 * math.log(4 / 3)
    assert mean_kl(before, after, torch.tensor([0, 1]), 2).tolist() == pytest.approx(
        [expected, 0.0], abs=1e-6
    )
    assert mean_kl(before, after, torch.tensor([0, 0]), 1).tolist() == pytest.approx([expected / 2], abs=1e-6)
    # Unnormalised logits give the same answer: shifting every logit by a constant changes nothing.
    assert mean_kl(before + 3.0, after - 1.0, torch.tensor([0, 1]), 2).tolist() == pytest.approx(
        [expected, 0.0], abs=1e-6
    )


def test_kl_is_not_symmetric():
    p = torch.log(torch.tensor([[0.5, 0.5]]))
    q = torch.log(torch.tensor([[0.25, 0.75]]))
    reverse = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)  # KL(q || p)
    assert mean_kl(q, p, torch.tensor([0]), 1).item() == pytest.approx(reverse, abs=1e-6)
    assert mean_kl(p, q, torch.tensor([0]), 1).item() != pytest.approx(reverse, abs=1e-4)


def test_accuracy_drawdown():
    before = torch.tensor([1.0, 0.5, 0.0])
    after = torch.tensor([0.5, 0.5, 1.0])
    assert accuracy_drawdown(before, after).tolist() == pytest.approx([0.5, 0.0, -1.0])


def test_perplexity():
    # Two tokens each with probability 1/4: NLL sum 2 ln 4, perplexity 4.
    assert perplexity(2 * math.log(4), 2) == pytest.approx(4.0)
    # Token-weighted: probabilities 1/2, 1/8 give exp((ln 2 + ln 8) / 2) = 4.
    assert perplexity(math.log(2) + math.log(8), 2) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="at least one"):
        perplexity(0.0, 0)


def test_mean_or_none():
    assert mean_or_none([1.0, None, 0.0]) == pytest.approx(0.5)
    assert mean_or_none([True, False, False, False]) == pytest.approx(0.25)
    assert mean_or_none([None, None]) is None
    assert mean_or_none([]) is None


def test_rates_are_exact_shares_in_float64():
    # 23 of 24 positions is 23/24, not float32's 0.95833331: a gate's mean of such rates that equals its
    # threshold exactly must not read a few 1e-9 under it.
    before = torch.arange(24)
    after = before.clone()
    after[5] = -1
    one_example = torch.zeros(24, dtype=torch.long)
    unchanged = unchanged_fraction(before, after, one_example, 1)
    assert unchanged.dtype == torch.float64 and float(unchanged[0]) == 23 / 24
    logits = torch.nn.functional.one_hot(after.clamp(min=0), 24).float()
    accuracy = token_accuracy(logits, before, one_example, 1)
    assert accuracy.dtype == torch.float64 and float(accuracy[0]) == 23 / 24
