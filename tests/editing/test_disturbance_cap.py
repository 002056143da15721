"""A bound on how far a least-squares update may move the protected keys' outputs."""

from __future__ import annotations

import math

import pytest
import torch

from editing.config import EditorConfig
from editing.core.hooks import Orientation
from editing.mend.aggregation import least_squares_update, output_energy, prior_factor, protected_energy
from editing.mend.editor import MendEditor
from editing.mend.editor_net import MendNetwork
from tests.editing.test_aggregation import RECORDS, _batch, _direct, _ls_editor, _second_moment

RIDGE, PROTECT = 0.3, 2.0


def _solve(kind: str, side: str, max_energy: float | None) -> torch.Tensor:
    keys, values = _batch(kind)
    moment = _second_moment()
    prior = prior_factor(RIDGE, PROTECT, moment, moment.shape[0]) if side == "row" else None
    return least_squares_update(
        keys, values, Orientation.IN_OUT, ridge=RIDGE, protect=PROTECT, second_moment=moment, prior=prior,
        max_energy=max_energy,
    )  # fmt: skip


@pytest.mark.parametrize("side", ["input", "row"])
def test_a_cap_the_solution_stays_under_changes_nothing(side):
    uncapped = _solve("few", side, None)
    energy = protected_energy(uncapped, _second_moment())
    torch.testing.assert_close(_solve("few", side, 1.01 * energy), uncapped)


@pytest.mark.parametrize("side", ["input", "row"])
@pytest.mark.parametrize("kind", ["one", "few", "rank_deficient"])
def test_a_binding_cap_is_met_closely_by_a_more_regularised_solution(kind, side):
    moment = _second_moment()
    uncapped = _solve(kind, side, None)
    cap = 0.2 * protected_energy(uncapped, moment)
    capped = _solve(kind, side, cap)
    energy = protected_energy(capped, moment)
    # The multiplier is bisected to 5%; energy falls about as 1 / m^2 there, so it lands within ~10%.
    assert 0.85 * cap <= energy <= cap
    # Not a shrunken copy of the uncapped update: the least-squares solution with a larger prior, which
    # gives up most along the directions the protected keys use. Find its multiplier and compare.
    keys, values = _batch(kind)
    low, high = 1.0, 1e6
    for _ in range(200):
        middle = math.sqrt(low * high)
        energy_at = protected_energy(_direct(keys, values, middle * RIDGE, middle * PROTECT, moment), moment)
        low, high = (middle, high) if energy_at > energy else (low, middle)
    torch.testing.assert_close(capped, _direct(keys, values, low * RIDGE, low * PROTECT, moment), rtol=1e-6,
                               atol=1e-9)  # fmt: skip


def test_the_input_and_row_sides_cap_alike_and_a_tighter_cap_moves_less():
    moment = _second_moment()
    cap = 0.3 * protected_energy(_solve("few", "input", None), moment)
    torch.testing.assert_close(_solve("few", "input", cap), _solve("few", "row", cap))
    assert protected_energy(_solve("few", "input", cap / 4), moment) < protected_energy(
        _solve("few", "input", cap), moment
    )


def test_a_zero_cap_is_refused_rather_than_looped_on():
    with pytest.raises(ValueError, match="protected energy"):
        _solve("few", "input", 0.0)


def test_an_editor_reports_its_disturbance_and_keeps_every_weight_under_its_cap(tiny_llama):
    editor = _ls_editor(tiny_llama)
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    rows = editor.edit_rows(model, tokenizer, RECORDS)
    plain = editor.aggregate(rows)
    assert not any(key.startswith("disturbance/") for key in plain.diagnostics)

    measured = editor.with_disturbance_cap(math.inf, model).aggregate(rows)  # reports, bounds nothing
    for name, delta in plain.deltas.items():
        torch.testing.assert_close(measured.deltas[name], delta)
        moment, orientation = editor.protected.second_moments[name], editor.network.layers[name].orientation
        weight = dict(model.named_parameters())[name]
        expected = output_energy(delta, moment, orientation) / output_energy(weight, moment, orientation)
        assert measured.diagnostics[f"disturbance/{name}"] == pytest.approx(expected)

    share = 0.25 * min(measured.diagnostics[f"disturbance/{name}"] for name in plain.deltas)
    capped = editor.with_disturbance_cap(share, model).aggregate(rows)
    for name in plain.deltas:
        assert 0.8 * share <= capped.diagnostics[f"disturbance/{name}"] <= share * (1 + 1e-9)
    # Lifting the cap gives the learned solve back.
    lifted = editor.with_disturbance_cap(share, model).with_disturbance_cap(None, model).aggregate(rows)
    for name, delta in plain.deltas.items():
        torch.testing.assert_close(lifted.deltas[name], delta)


def test_a_cap_is_refused_for_the_sum_and_when_not_positive(tiny_llama):
    from tests.tiny import tiny_protected

    editor = _ls_editor(tiny_llama)
    with pytest.raises(ValueError, match="positive"):
        editor.with_disturbance_cap(0.0, tiny_llama.model)
    scope = editor.scope
    summed = MendEditor(
        MendNetwork(scope.layers, EditorConfig(aggregation="sum")), scope, tiny_protected(tiny_llama)
    )
    with pytest.raises(ValueError, match="least-squares"):
        summed.with_disturbance_cap(0.1, tiny_llama.model)
