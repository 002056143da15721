"""Which weights an editor changes in a given model, resolved from the model family's preset."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from editing.config import ModelPreset, preset_for_model_type
from editing.core.forward import get_blocks
from editing.core.hooks import LayerInfo, describe_layer


@dataclass(frozen=True)
class EditScope:
    """The edited weights of one model, and the lowest block they live in (everything below is frozen)."""

    blocks_path: str
    first_block: int
    layers: tuple[LayerInfo, ...]

    @property
    def weight_names(self) -> tuple[str, ...]:
        return tuple(layer.weight_name for layer in self.layers)


def resolve_scope(model: nn.Module, preset: ModelPreset | None = None) -> EditScope:
    """Resolve the preset (by default the one for ``model.config.model_type``) against this model."""
    preset = preset or preset_for_model_type(model.config.model_type)
    num_blocks = len(get_blocks(model, preset.blocks))
    layers = tuple(describe_layer(model, name) for name in preset.weight_names(num_blocks))
    return EditScope(preset.blocks, min(preset.layer_indices(num_blocks)), layers)
