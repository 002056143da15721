"""How the edits of a batch become one weight change per edited weight.

MEND's network turns the gradient factors ``(u, delta)`` of every scored token into
``(u_tilde, delta_tilde)``. The rows of a batch (every token of every edit) are combined in one of two ways:

* ``sum`` (the paper): ``W' = W - step * sum_i delta_tilde_i u_tilde_i^T``. Related edits add up: twenty
  edits of one relation grow the update twentyfold along their shared direction.
* ``least_squares`` (MALMEN's aggregation with MEMIT's protected keys): row ``i`` asks for the value shift
  its own rank-1 update makes at its own key, ``v_i = -step (u_tilde_i . u_i) delta_tilde_i``, and the
  update is the ``S`` that best gives every key its shift while moving protected keys as little as possible::

      min_S  sum_i ||S u_i - v_i||^2  +  ridge ||S||_F^2  +  protect * E_p ||S k_p||^2

  ``k_p`` are the layer's inputs over general text and facts the model already gets right, with second
  moment ``C = E[k k^T]`` (``editing.mend.protected``). The normal equation, solved on the input side::

      S^T = (U^T U + ridge I + protect C)^{-1} U^T V             U: (rows, d_in), V: (rows, d_out)

  For one row and no protection this is ``v u^T / (ridge + |u|^2)``: the shift ``v`` at ``u``, nothing else.

Training needs the same update for many small groups at once, with gradients, so it uses the Woodbury
form in the eigenbasis ``C = Q diag(c) Q^T``, where ``B = ridge I + protect C`` is inverted for free:
``S = V^T L`` with ``L = (I + U B^{-1} U^T)^{-1} U B^{-1}`` (rows x rows systems, one per group).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import torch

from editing.core.hooks import Orientation


class Aggregation(enum.StrEnum):
    SUM = "sum"
    LEAST_SQUARES = "least_squares"


@dataclass(frozen=True)
class ProtectedBasis:
    """The eigendecomposition of one weight's protected second moment, ``C = Q diag(c) Q^T``."""

    eigenvectors: torch.Tensor  # (d_in, d_in) float32, Q
    eigenvalues: torch.Tensor  # (d_in,) float32, c >= 0

    @classmethod
    def of(cls, second_moment: torch.Tensor) -> ProtectedBasis:
        eigenvalues, eigenvectors = torch.linalg.eigh(second_moment.double())
        return cls(eigenvectors.float(), eigenvalues.clamp(min=0).float())

    def to(self, device: torch.device | str) -> ProtectedBasis:
        return ProtectedBasis(self.eigenvectors.to(device), self.eigenvalues.to(device))


def value_shifts(keys: torch.Tensor, pseudo_keys: torch.Tensor, pseudo_values: torch.Tensor) -> torch.Tensor:
    """(rows, d_out) ``v_i = (pseudo_key_i . key_i) pseudo_value_i``: what row i's rank-1 update does at its
    own key. ``pseudo_keys`` already carry ``-step``."""
    return (pseudo_keys * keys).sum(dim=-1, keepdim=True) * pseudo_values  # (rows, 1) * (rows, d_out)


def _layout(update_in_out: torch.Tensor, orientation: Orientation) -> torch.Tensor:
    """``S^T`` (d_in, d_out) laid out like the weight."""
    return update_in_out.transpose(0, 1) if orientation is Orientation.OUT_IN else update_in_out


def sum_update(
    pseudo_keys: torch.Tensor, pseudo_values: torch.Tensor, orientation: Orientation
) -> torch.Tensor:
    """The paper's update: ``sum_i pseudo_value_i pseudo_key_i^T``, laid out like the weight."""
    return _layout(pseudo_keys.transpose(0, 1) @ pseudo_values, orientation)  # (d_in, rows) @ (rows, d_out)


def normal_matrix(
    keys: torch.Tensor, ridge: float, protect: float, second_moment: torch.Tensor | None
) -> torch.Tensor:
    """(d_in, d_in) float64 ``U^T U + ridge I + protect C``."""
    keys = keys.double()
    matrix = keys.transpose(0, 1) @ keys  # (d_in, d_in)
    matrix.diagonal().add_(ridge)
    if second_moment is not None and protect > 0:
        matrix += protect * second_moment.to(matrix)
    return matrix


def prior_factor(ridge: float, protect: float, second_moment: torch.Tensor | None, d_in: int) -> torch.Tensor:
    """(d_in, d_in) float64 Cholesky factor of ``B = ridge I + protect C``: the part of the normal matrix
    that does not depend on the edits, factorised once per editor for the row-side solve."""
    return torch.linalg.cholesky(normal_matrix(torch.zeros(0, d_in), ridge, protect, second_moment))


def least_squares_update(
    keys: torch.Tensor,
    values: torch.Tensor,
    orientation: Orientation,
    *,
    ridge: float,
    protect: float = 0.0,
    second_moment: torch.Tensor | None = None,
    prior: torch.Tensor | None = None,
    max_energy: float | None = None,
) -> torch.Tensor:
    """The least-squares update for ``keys`` (rows, d_in) -> ``values`` (rows, d_out), laid out like the
    weight, in float64; ``ridge > 0`` keeps a rank-deficient batch solvable.

    Solved on the input side (one Cholesky factorisation of the d_in x d_in normal matrix), so the cost of
    a large batch or a whole ledger does not grow with its rows beyond forming ``U^T U``. A batch with
    fewer rows than inputs, given ``prior`` (``prior_factor``), is solved on the row side instead, with
    ``S^T = B^{-1} U^T (I + U B^{-1} U^T)^{-1} V``: the same solution (tested) for a fraction of the cost.

    ``max_energy`` bounds ``E_p ||S k_p||^2`` (``protected_energy``): where the solution moves protected
    keys more, ``B`` is scaled up until it does not (``_capped``).
    """
    if ridge <= 0:
        raise ValueError(f"least squares needs a positive ridge, got {ridge}")
    if keys.shape[0] != values.shape[0]:
        raise ValueError(f"{keys.shape[0]} keys but {values.shape[0]} values")
    solve = _solver(keys.double(), values.double(), ridge, protect, second_moment, prior)
    update = solve(1.0)  # (d_in, d_out) = S^T
    if max_energy is not None and second_moment is not None:
        update = _capped(solve, update, second_moment.double(), max_energy)
    return _layout(update, orientation).to(values.dtype)


def _solver(keys64, values64, ridge, protect, second_moment, prior):
    """``solve(m)``: (d_in, d_out) ``S^T = (U^T U + m B)^{-1} U^T V`` for a multiplier ``m`` of the prior
    ``B = ridge I + protect C``, with whatever does not depend on ``m`` computed once."""
    if prior is not None and keys64.shape[0] < keys64.shape[1]:
        scaled = torch.cholesky_solve(keys64.transpose(0, 1), prior)  # (d_in, rows) = B^{-1} U^T
        gram = keys64 @ scaled  # (rows, rows) = U B^{-1} U^T
        identity = torch.eye(gram.shape[0], dtype=gram.dtype)

        def solve(multiplier: float) -> torch.Tensor:  # (m B)^{-1} = B^{-1} / m
            return (scaled / multiplier) @ torch.linalg.solve(gram / multiplier + identity, values64)

        return solve
    base = normal_matrix(torch.zeros(0, keys64.shape[1]), ridge, protect, second_moment)  # (d_in, d_in) = B
    gram = keys64.transpose(0, 1) @ keys64  # (d_in, d_in) = U^T U
    right = keys64.transpose(0, 1) @ values64  # (d_in, d_out) = U^T V

    def solve(multiplier: float) -> torch.Tensor:
        return torch.cholesky_solve(right, torch.linalg.cholesky(gram + multiplier * base))

    return solve


def protected_energy(update_in_out: torch.Tensor, second_moment: torch.Tensor) -> float:
    """``E_p ||S k_p||^2 = trace(S C S^T)`` for ``S^T`` (d_in, d_out): how far the update moves the
    protected keys' outputs, in their units."""
    moment = second_moment.to(update_in_out)
    return float((update_in_out * (moment @ update_in_out)).sum())  # sum over (d_in, d_out)


def output_energy(matrix: torch.Tensor, second_moment: torch.Tensor, orientation: Orientation) -> float:
    """``E_p ||M k_p||^2`` for ``M`` laid out like the weight: of the weight itself, the unit of a
    disturbance cap; of an update, how much of it the update uses."""
    return protected_energy(_layout(matrix.detach().double(), orientation), second_moment.double())


def _capped(solve, update: torch.Tensor, moment: torch.Tensor, max_energy: float) -> torch.Tensor:
    """The solution with the smallest prior multiplier ``m >= 1`` (to about 5% in ``m``) whose protected
    energy is at most ``max_energy``; ``update`` (``m = 1``) when it already is.

    A larger ``m`` pulls the solution toward zero, hardest along the directions protected keys use, so the
    energy falls with it (to zero as ``m`` grows). Why a cap: training sees groups of a few dozen edits; a
    batch or ledger of hundreds can ask for values the keys cannot carry without an update that moves
    general text far (perplexity x10^4 at 1,024 edits), and a larger regulariser trades those edits'
    strength for the model's, which the gate then judges.
    """
    if protected_energy(update, moment) <= max_energy:
        return update
    low, high = 1.0, 2.0
    while protected_energy(solved := solve(high), moment) > max_energy:
        low, high = high, high * 4.0
        if high > 1e12:  # the energy of S ~ U^T V / m falls as 1 / m^2: unreachable only for a zero cap
            raise ValueError(f"no prior multiplier brings the protected energy under {max_energy}")
    while high / low > 1.05:
        middle = math.sqrt(low * high)
        candidate = solve(middle)
        if protected_energy(candidate, moment) > max_energy:
            low = middle
        else:
            high, solved = middle, candidate
    return solved


def solved_keys(
    keys: torch.Tensor,
    ridge: torch.Tensor,
    protect: torch.Tensor,
    basis: ProtectedBasis | None,
) -> torch.Tensor:
    """(groups, rows, d_in) ``L = (I + U B^{-1} U^T)^{-1} U B^{-1}`` per group, ``B = ridge I + protect C``.

    ``keys`` (groups, rows, d_in) are zero-padded: a zero row adds nothing to ``U^T U`` and gets a zero
    ``L`` row. Differentiable in ``ridge`` and ``protect`` (0-d tensors). The group's update is ``V^T L``,
    the least-squares solution above, without forming any (d_in, d_in) matrix per group.
    """
    dtype, keys = keys.dtype, keys.to(torch.promote_types(keys.dtype, torch.float32))
    # Not in bf16 even under autocast: the rotation feeds a solve whose system can be badly scaled.
    with torch.autocast(keys.device.type, enabled=False):
        if basis is None:
            scaled = keys / ridge  # (groups, rows, d_in) = U B^{-1}
        else:
            rotated = keys @ basis.eigenvectors  # (groups, rows, d_in) = U Q
            inverse = 1.0 / (ridge + protect * basis.eigenvalues)  # (d_in,) B^{-1} in the eigenbasis
            scaled = (rotated * inverse) @ basis.eigenvectors.transpose(
                0, 1
            )  # (groups, rows, d_in) = U B^{-1}
        # The rows x rows system can be badly scaled (|u|^2 / ridge is large): solve it in float64.
        gram = scaled.double() @ keys.double().transpose(1, 2)  # (groups, rows, rows) = U B^{-1} U^T
        system = gram + torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
        return torch.linalg.solve(system, scaled.double()).to(dtype)  # (groups, rows, d_in)


@dataclass(frozen=True)
class SolverSettings:
    """One edited weight's ridge and protection weight (learned by the editor), its protected moment and
    the Cholesky factor of ``ridge I + protect C`` (``prior_factor``)."""

    ridge: float
    protect: float
    second_moment: torch.Tensor | None
    prior: torch.Tensor | None = None
    max_energy: float | None = None  # a bound on E_p ||S k_p||^2 (None: unbounded)


def aggregate_update(
    aggregation: Aggregation,
    keys: torch.Tensor,
    pseudo_keys: torch.Tensor,
    pseudo_values: torch.Tensor,
    orientation: Orientation,
    solver: SolverSettings | None = None,
) -> torch.Tensor:
    """One weight's update from its rows, by ``aggregation``; laid out like the weight."""
    if aggregation is Aggregation.SUM:
        return sum_update(pseudo_keys, pseudo_values, orientation)
    if solver is None:
        raise ValueError("least-squares aggregation needs the weight's solver settings")
    return least_squares_update(
        keys,
        value_shifts(keys, pseudo_keys, pseudo_values),
        orientation,
        ridge=solver.ridge,
        protect=solver.protect,
        second_moment=solver.second_moment,
        prior=solver.prior,
        max_energy=solver.max_energy,
    )
