"""Merging edits into a model: exact undo, and refusals that leave the model untouched."""

from __future__ import annotations

import pytest
import torch

from editing.core.apply import EditResult, NonFiniteEditError, combine, deltas_between
from editing.core.models import fingerprint


def preset_deltas(loaded, scale: float = 1e-2, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random deltas for the preset's weights of a tiny model."""
    generator = torch.Generator().manual_seed(seed)
    names = loaded.preset.weight_names(len(loaded.model.get_submodule(loaded.preset.blocks)))
    parameters = dict(loaded.model.named_parameters())
    return {name: scale * torch.randn(parameters[name].shape, generator=generator) for name in names}


def logits_of(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([[3, 4, 5, 6, 7]])).logits


def test_merge_then_undo_is_bit_exact(tiny_model):
    model = tiny_model.model
    result = EditResult(preset_deltas(tiny_model))
    before = logits_of(model)
    handle = result.apply(model)
    assert fingerprint(model) != tiny_model.fingerprint
    assert not torch.equal(logits_of(model), before)
    # In place: the merged weights are W + delta.
    name, delta = next(iter(result.deltas.items()))
    assert torch.equal(dict(model.named_parameters())[name], handle.originals[name] + delta)
    handle.undo()
    handle.undo()  # a second undo is a no-op
    assert fingerprint(model) == tiny_model.fingerprint
    assert torch.equal(logits_of(model), before)


def test_applied_context_undoes_on_error(tiny_model):
    with (
        pytest.raises(RuntimeError, match="boom"),
        EditResult(preset_deltas(tiny_model)).applied(tiny_model.model),
    ):
        assert fingerprint(tiny_model.model) != tiny_model.fingerprint
        raise RuntimeError("boom")
    assert fingerprint(tiny_model.model) == tiny_model.fingerprint


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_delta_is_refused_and_model_untouched(tiny_model, bad_value):
    deltas = preset_deltas(tiny_model)
    last = list(deltas)[-1]  # earlier deltas are fine: none of them may be written either
    deltas[last][0, 0] = bad_value
    with pytest.raises(NonFiniteEditError, match=last):
        EditResult(deltas).apply(tiny_model.model)
    assert fingerprint(tiny_model.model) == tiny_model.fingerprint


def test_shape_mismatch_is_refused(tiny_model):
    deltas = preset_deltas(tiny_model)
    last = list(deltas)[-1]
    deltas[last] = deltas[last].T.contiguous()
    with pytest.raises(ValueError, match="shape"):
        EditResult(deltas).apply(tiny_model.model)
    assert fingerprint(tiny_model.model) == tiny_model.fingerprint


def test_unknown_parameter_is_refused(tiny_model):
    with pytest.raises(KeyError, match=r"no_such\.weight"):
        EditResult({"no_such.weight": torch.zeros(2)}).apply(tiny_model.model)


def test_edited_weights_leave_the_model_alone(tiny_model):
    result = EditResult(preset_deltas(tiny_model))
    weights = result.edited_weights(tiny_model.model)
    with result.applied(tiny_model.model) as model:
        merged = {name: parameter.clone() for name, parameter in model.named_parameters() if name in weights}
    for name, tensor in weights.items():
        assert torch.equal(tensor, merged[name])
    assert fingerprint(tiny_model.model) == tiny_model.fingerprint


def test_combine_and_deltas_between(tiny_model):
    first, second = preset_deltas(tiny_model, seed=1), preset_deltas(tiny_model, seed=2)
    total = combine([EditResult(first), EditResult(second)])
    for name in first:
        assert torch.equal(total.deltas[name], first[name] + second[name])
    parameters = dict(tiny_model.model.named_parameters())
    before = {name: parameters[name].detach().clone() for name in first}
    with EditResult(first).applied(tiny_model.model) as model:
        recovered = deltas_between(before, model)
    for name in first:
        torch.testing.assert_close(recovered[name], first[name], rtol=0, atol=1e-6)
