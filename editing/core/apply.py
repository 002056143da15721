"""Weight edits as data: compute a delta once, merge it into a model safely, undo it exactly.

Every editor (MEND, FT, FT+KL) returns an ``EditResult`` holding one delta tensor per edited parameter.
Merging refuses non-finite results before touching any weight, and undo restores the saved originals,
so a merged-then-undone model is bit-identical to the model before the edit (adding and subtracting a
delta in floating point would not be).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch
from torch import nn

if TYPE_CHECKING:
    from editing.data.records import EditRecord


class NonFiniteEditError(ValueError):
    """An edit would write NaN or infinite values into the model."""


def named_parameters(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Parameter]:
    """Look up parameters by full name, with an error naming any that do not exist."""
    available = dict(model.named_parameters())
    missing = [name for name in names if name not in available]
    if missing:
        raise KeyError(f"model has no parameter(s) {missing}")
    return {name: available[name] for name in names}


@dataclass
class AppliedEdit:
    """Handle to an edit merged into a model; ``undo`` puts the original tensors back."""

    model: nn.Module
    originals: dict[str, torch.Tensor]
    undone: bool = False

    @torch.no_grad()
    def undo(self) -> None:
        if self.undone:
            return
        parameters = named_parameters(self.model, list(self.originals))
        for name, original in self.originals.items():
            parameters[name].copy_(original)
        self.undone = True


@dataclass
class EditResult:
    """What an editor produced: ``deltas[name]`` has the shape of the parameter ``name``."""

    deltas: dict[str, torch.Tensor]
    diagnostics: dict[str, float] = field(default_factory=dict)

    def edited_weights(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """``W + delta`` per edited parameter, for ``functional_call`` without touching the model."""
        parameters = named_parameters(model, list(self.deltas))
        return {name: parameters[name] + delta.to(parameters[name]) for name, delta in self.deltas.items()}

    @torch.no_grad()
    def apply(self, model: nn.Module) -> AppliedEdit:
        """Merge in place. Checks every result first, so a refused edit leaves the model untouched."""
        parameters = named_parameters(model, list(self.deltas))
        merged = {}
        for name, delta in self.deltas.items():
            if delta.shape != parameters[name].shape:
                raise ValueError(
                    f"{name}: delta shape {tuple(delta.shape)} != {tuple(parameters[name].shape)}"
                )
            result = parameters[name] + delta.to(parameters[name])
            if not torch.isfinite(result).all():
                raise NonFiniteEditError(f"edit of {name} produces non-finite weights; model left unchanged")
            merged[name] = result
        originals = {name: parameters[name].detach().clone() for name in merged}
        for name, result in merged.items():
            parameters[name].copy_(result)
        return AppliedEdit(model, originals)

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """Merge for the duration of the block, then undo (also on error)."""
        handle = self.apply(model)
        try:
            yield model
        finally:
            handle.undo()

    def to(self, device: torch.device | str) -> EditResult:
        return EditResult({n: d.to(device) for n, d in self.deltas.items()}, dict(self.diagnostics))

    def norms(self) -> dict[str, float]:
        return {name: float(delta.norm()) for name, delta in self.deltas.items()}


class Editor(Protocol):
    """Anything that turns edit records into weight deltas for a model."""

    name: str

    def edit(self, model: nn.Module, tokenizer, records: Sequence[EditRecord]) -> EditResult:
        """Compute (not apply) the edit that makes ``model`` produce each record's ``target_new``."""
        ...


def combine(results: Sequence[EditResult]) -> EditResult:
    """Sum of several edits' deltas (sequential application of independently computed edits)."""
    total: dict[str, torch.Tensor] = {}
    for result in results:
        for name, delta in result.deltas.items():
            total[name] = total[name] + delta if name in total else delta.clone()
    return EditResult(total)


def deltas_between(before: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Deltas that turn the tensors in ``before`` into the model's current values of the same names."""
    parameters = named_parameters(model, list(before))
    return {name: (parameters[name].detach() - before[name]).clone() for name in before}
