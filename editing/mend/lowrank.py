"""Many independent edits in one forward pass, as low-rank updates of the edited layers' outputs.

Both aggregations give every group of edits an update ``W + R^T L`` of low rank (``L``: (rows, d_in),
``R``: (rows, d_out)): for the sum, ``L = -step * u_tilde`` and ``R = delta_tilde``; for least squares,
``L`` are the solved keys and ``R`` the value shifts (``editing.mend.aggregation``). The layer's output for
an input ``x`` becomes ``x W^T + (x L^T) R``; the same holds for GPT-2's Conv1D, whose weight is laid out
the other way round. Adding ``(x L^T) R`` to each sequence's output with its *own* group's ``L`` and ``R``
lets one batched forward pass serve a different edit per sequence, without building any edited weight
matrix. It is algebraically the same as ``functional_call`` with ``W + R^T L`` per sequence
(``tests/editing/test_trainer.py`` checks that losses and gradients agree).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from editing.core.hooks import LayerInfo, outer_sum
from editing.mend.aggregation import Aggregation, ProtectedBasis, solved_keys, value_shifts
from editing.mend.editor_net import MendNetwork

Update = tuple[torch.Tensor, torch.Tensor]  # L (groups or sequences, rank, d_in), R (..., rank, d_out)


def pad_by_group(rows: torch.Tensor, row_group: torch.Tensor, groups: int) -> torch.Tensor:
    """(groups, rank, d) with each group's rows first and zeros after; ``row_group`` (rows,) is sorted."""
    counts = torch.bincount(row_group, minlength=groups)  # (groups,)
    starts = torch.cumsum(counts, 0) - counts  # (groups,)
    position = torch.arange(row_group.shape[0], device=row_group.device) - starts[row_group]  # (rows,)
    rank = max(int(counts.max()), 1)
    return rows.new_zeros(groups, rank, rows.shape[-1]).index_put((row_group, position), rows)


def group_factors(
    network: MendNetwork,
    keys: Mapping[str, torch.Tensor],
    transformed: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    row_group: torch.Tensor,
    groups: int,
    protection: Mapping[str, tuple[ProtectedBasis, float]] | None = None,
) -> dict[str, Update]:
    """Per edited weight, every group's ``(L, R)`` under the network's aggregation, differentiable in the
    network, its step sizes and (least squares) its solver weights.

    ``keys[name]`` (rows, d_in) are the keys of the solve (``editing.mend.editor.key_rows``);
    ``transformed[name]`` the network's output for the same rows; ``protection[name]`` is ``(basis, mean eigenvalue)`` of the weight's protected keys.
    """
    aggregation = Aggregation(network.config.aggregation)
    factors = {}
    for name, (u_tilde, delta_tilde) in transformed.items():
        pseudo_keys = -network.step_size(name) * u_tilde  # (rows, d_in)
        if aggregation is Aggregation.SUM:
            factors[name] = (
                pad_by_group(pseudo_keys, row_group, groups),
                pad_by_group(delta_tilde, row_group, groups),
            )
            continue
        if protection is None or name not in protection:
            raise ValueError(f"least-squares aggregation needs protected keys for {name}")
        basis, mean_eigenvalue = protection[name]
        ridge_scale, protect = network.solver_weights(name)
        padded_keys = pad_by_group(keys[name], row_group, groups)  # (groups, rank, d_in)
        values = value_shifts(keys[name], pseudo_keys, delta_tilde)  # (rows, d_out)
        left = solved_keys(padded_keys, ridge_scale * mean_eigenvalue, protect, basis)
        factors[name] = (left, pad_by_group(values, row_group, groups))
    return factors


def group_weights(
    parameters: Mapping[str, torch.Tensor],
    layers: Mapping[str, LayerInfo],
    factors: Mapping[str, Update],
    group: int,
) -> dict[str, torch.Tensor]:
    """``W + R^T L`` of one group, laid out like each weight (for ``functional_call``: the reference)."""
    weights = {}
    for name, (left, right) in factors.items():
        weight = parameters[name]
        weights[name] = outer_sum(
            left[group].to(weight.dtype), right[group].to(weight.dtype), layers[name].orientation, base=weight
        )
    return weights


@contextmanager
def low_rank_edits(
    model: nn.Module, layers: Mapping[str, LayerInfo], updates: Mapping[str, Update]
) -> Iterator[None]:
    """Within the block, edited layers add each sequence's ``(x L^T) R`` to their output; hooks always removed.

    ``updates[name]`` holds one ``(L, R)`` per sequence of the batch: (sequences, rank, d_in / d_out).
    """
    handles = []

    def make_hook(left: torch.Tensor, right: torch.Tensor):
        def add_update(_module, inputs, output):
            coefficients = torch.einsum(
                "std,srd->str", inputs[0], left.to(output.dtype)
            )  # (seqs, tokens, rank)
            return output + torch.einsum(
                "str,sro->sto", coefficients, right.to(output.dtype)
            )  # (seqs, tokens, d_out)

        return add_update

    try:
        for name, (left, right) in updates.items():
            module = model.get_submodule(layers[name].module_name)
            handles.append(module.register_forward_hook(make_hook(left, right)))
        yield
    finally:
        for handle in handles:
            handle.remove()
