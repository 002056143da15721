"""Capture the rank-1 factors of a fine-tuning gradient for the weights an editor changes.

For a layer ``y = W x`` applied to tokens, the gradient of a loss with respect to ``W`` is a sum over
tokens of outer products of the layer's input ``u`` and the gradient of the loss with respect to its
output ``delta``. MEND transforms those factors instead of the (much larger) gradient itself.

Orientation follows the layer *type*, never the weight's shape (a square weight would defeat shape
guessing): ``nn.Linear`` stores ``(d_out, d_in)`` so its gradient is ``delta^T u``; GPT-2's ``Conv1D``
stores ``(d_in, d_out)`` so its gradient is ``u^T delta``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn


class Orientation(enum.Enum):
    OUT_IN = "out_in"  # weight is (d_out, d_in): nn.Linear
    IN_OUT = "in_out"  # weight is (d_in, d_out): transformers' Conv1D


def _layer_types() -> dict[type[nn.Module], Orientation]:
    from transformers.pytorch_utils import Conv1D

    return {nn.Linear: Orientation.OUT_IN, Conv1D: Orientation.IN_OUT}


@dataclass(frozen=True)
class LayerInfo:
    """Where an edited weight lives and how to read its shape."""

    weight_name: str
    module_name: str
    orientation: Orientation
    d_in: int
    d_out: int


def describe_layer(model: nn.Module, weight_name: str) -> LayerInfo:
    """Resolve a weight name (``...mlp.up_proj.weight``) to its module, orientation and sizes."""
    module_name, _, attribute = weight_name.rpartition(".")
    if attribute != "weight":
        raise ValueError(f"{weight_name}: only '.weight' parameters of linear layers can be edited")
    module = model.get_submodule(module_name)
    for layer_type, orientation in _layer_types().items():
        if isinstance(module, layer_type):
            rows, columns = module.weight.shape
            d_out, d_in = (rows, columns) if orientation is Orientation.OUT_IN else (columns, rows)
            return LayerInfo(weight_name, module_name, orientation, d_in, d_out)
    raise TypeError(
        f"{module_name} is a {type(module).__name__}; editable layer types: {list(_layer_types())}"
    )


def outer_sum(
    u: torch.Tensor, delta: torch.Tensor, orientation: Orientation, base: torch.Tensor | None = None
) -> torch.Tensor:
    """Sum over rows of the outer products, laid out like the weight (plus ``base`` when given, fused).

    u: (rows, d_in), delta: (rows, d_out) -> (d_out, d_in) for OUT_IN, (d_in, d_out) for IN_OUT.
    """
    left, right = (delta, u) if orientation is Orientation.OUT_IN else (u, delta)
    if base is None:
        return left.transpose(0, 1) @ right  # (d_out, rows) @ (rows, d_in) -> (d_out, d_in) for OUT_IN
    return torch.addmm(base, left.transpose(0, 1), right)  # base + the same product, in one pass


@dataclass(frozen=True)
class Factors:
    """Per-token factors of one weight's gradient, for a whole (padded) batch."""

    u: torch.Tensor  # (batch, seq, d_in): the layer's input
    delta: torch.Tensor  # (batch, seq, d_out): d loss / d layer output

    def gradient(self, orientation: Orientation) -> torch.Tensor:
        """The exact weight gradient: the sum over every token of the batch."""
        return outer_sum(self.u.flatten(0, 1), self.delta.flatten(0, 1), orientation)

    def rows(self, token_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, d_in), (rows, d_out): only the tokens selected by ``token_mask`` (batch, seq)."""
        return self.u[token_mask], self.delta[token_mask]


class FactorCapture:
    """Filled by ``capture_factors`` during one forward pass, then ``backward(loss)``."""

    def __init__(self, layers: Sequence[LayerInfo]):
        self.layers = {layer.weight_name: layer for layer in layers}
        self._inputs: dict[str, torch.Tensor] = {}
        self._outputs: dict[str, torch.Tensor] = {}
        self._output_grads: dict[str, torch.Tensor] = {}

    def backward(self, loss: torch.Tensor) -> None:
        """``delta`` of every captured layer: the gradient of ``loss`` with respect to its output.

        Asking autograd for the layer outputs themselves (not the weights) computes no weight gradient
        at all: the weights stay frozen, and the outer products ``delta^T u`` are the editor's business.
        """
        missing = [name for name in self.layers if name not in self._outputs]
        if missing:
            raise RuntimeError(f"no gradient reached {missing}: the forward pass must require grad")
        names = list(self._outputs)
        grads = torch.autograd.grad(loss, [self._outputs[name] for name in names], allow_unused=True)
        for name, grad in zip(names, grads, strict=True):
            output = self._outputs[name]
            self._output_grads[name] = torch.zeros_like(output) if grad is None else grad.detach()

    def factors(self) -> dict[str, Factors]:
        missing = [name for name in self.layers if name not in self._output_grads]
        if missing:
            raise RuntimeError(f"no gradient reached {missing}: call backward(loss) inside the capture block")
        return {name: Factors(self._inputs[name], self._output_grads[name]) for name in self.layers}


@contextmanager
def capture_factors(model: nn.Module, weight_names: Sequence[str]) -> Iterator[FactorCapture]:
    """Record each layer's input and output during a forward pass; hooks are always removed on exit.

    The forward pass must produce outputs that require grad (e.g. feed the lowest edited block a hidden
    state with ``requires_grad=True``); ``capture.backward(loss)`` then fills the output gradients. A
    layer that runs twice keeps its last call.
    """
    layers = [describe_layer(model, name) for name in weight_names]
    capture = FactorCapture(layers)
    handles = []

    def forward_hook(weight_name: str):
        def hook(_module, inputs, output):
            capture._inputs[weight_name] = inputs[0].detach()
            if output.requires_grad:
                capture._outputs[weight_name] = output

        return hook

    try:
        for layer in layers:
            module = model.get_submodule(layer.module_name)
            handles.append(module.register_forward_hook(forward_hook(layer.weight_name)))
        yield capture
    finally:
        for handle in handles:
            handle.remove()
