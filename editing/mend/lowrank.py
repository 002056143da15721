"""Many independent edits in one forward pass, as low-rank updates of the edited layers' outputs.

An edit replaces an edited weight ``W`` by ``W + D^T U`` (``U``: (rows, d_in), ``D``: (rows, d_out)),
so the layer's output for an input ``x`` becomes ``x W^T + (x U^T) D``; the same holds for GPT-2's
Conv1D, whose weight is laid out the other way round. Adding ``(x U^T) D`` to each sequence's output
with its *own* ``U`` and ``D`` lets one batched forward pass serve a different edit per sequence,
without building any edited weight matrix. It is algebraically the same as ``functional_call`` with
``W + delta`` per sequence (``tests/editing/test_lowrank.py`` checks losses and gradients agree).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from editing.core.hooks import LayerInfo
from editing.mend.editor_net import MendNetwork

Update = tuple[torch.Tensor, torch.Tensor]  # U (sequences, rank, d_in), D (sequences, rank, d_out)


def per_example_updates(
    network: MendNetwork,
    transformed: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    row_example: torch.Tensor,
    num_examples: int,
    sequence_example: torch.Tensor,
) -> dict[str, Update]:
    """Per edited weight, each sequence's ``(U, D)``: its example's rows, ``U`` scaled by ``-step``.

    ``row_example`` (rows,) is sorted (rows come example by example); ``sequence_example`` (sequences,)
    says which example's edit applies to each sequence. Examples with fewer rows are zero-padded.
    """
    counts = torch.bincount(row_example, minlength=num_examples)  # (examples,)
    starts = torch.cumsum(counts, 0) - counts  # (examples,)
    position = torch.arange(row_example.shape[0], device=row_example.device) - starts[row_example]  # (rows,)
    rank = int(counts.max())
    updates = {}
    for name, (u_tilde, delta_tilde) in transformed.items():
        scaled_u = -network.step_size(name) * u_tilde  # (rows, d_in)
        u = scaled_u.new_zeros(num_examples, rank, scaled_u.shape[-1]).index_put(
            (row_example, position), scaled_u
        )
        d = delta_tilde.new_zeros(num_examples, rank, delta_tilde.shape[-1]).index_put(
            (row_example, position), delta_tilde
        )
        updates[name] = (u[sequence_example], d[sequence_example])  # (sequences, rank, d_in / d_out)
    return updates


@contextmanager
def low_rank_edits(
    model: nn.Module, layers: Mapping[str, LayerInfo], updates: Mapping[str, Update]
) -> Iterator[None]:
    """Within the block, edited layers add each sequence's ``(x U^T) D`` to their output; hooks always removed."""
    handles = []

    def make_hook(u: torch.Tensor, d: torch.Tensor):
        def add_update(_module, inputs, output):
            coefficients = torch.einsum("std,srd->str", inputs[0], u.to(output.dtype))  # (seqs, tokens, rank)
            return output + torch.einsum(
                "str,sro->sto", coefficients, d.to(output.dtype)
            )  # (seqs, tokens, d_out)

        return add_update

    try:
        for name, (u, d) in updates.items():
            module = model.get_submodule(layers[name].module_name)
            handles.append(module.register_forward_hook(make_hook(u, d)))
        yield
    finally:
        for handle in handles:
            handle.remove()
