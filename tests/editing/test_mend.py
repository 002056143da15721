"""MEND editor: factor capture, orientation, the editor network, edits, checkpoints and the prefix cache."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from editing.config import EditorConfig
from editing.core.apply import NonFiniteEditError
from editing.core.forward import scored_logits
from editing.core.hooks import Orientation, capture_factors, describe_layer, outer_sum
from editing.core.losses import per_example_mean, token_nll
from editing.core.targets import resolve_scope
from editing.core.tokens import encode_batch
from editing.data.records import EditRecord, PromptAnswer
from editing.mend.editor import MendEditor, capture_edit_factors, transform_factors
from editing.mend.editor_net import MendNetwork
from editing.training.checkpoint import EditorMismatchError, load_editor, save_editor
from tests.tiny import tiny_protected

RECORDS = [
    EditRecord(
        "r0",
        "The capital of France is",
        "Rome",
        rephrase_prompts=("The French capital is",),
        locality=(PromptAnswer("The capital of Spain is", "Madrid"),),
    ),
    EditRecord(
        "r1",
        "Harry Potter was written by",
        "Tokyo",
        rephrase_prompts=("The author of Harry Potter is",),
        locality=(PromptAnswer("The mother tongue of Danielle Darrieux is", "French"),),
    ),
]


def _editor(loaded, **config) -> MendEditor:
    scope = resolve_scope(loaded.model)
    torch.manual_seed(0)
    network = MendNetwork(scope.layers, EditorConfig(**config))
    protected = tiny_protected(loaded) if network.config.aggregation == "least_squares" else None
    return MendEditor(network, scope, protected)


def _edit_loss(loaded, records) -> float:
    batch = encode_batch(loaded.tokenizer, [r.prompt for r in records], [r.target_new for r in records])
    return float(capture_edit_factors(loaded.model, resolve_scope(loaded.model), batch).loss)


def test_capture_records_shapes_and_removes_hooks(tiny_model):
    model, scope = tiny_model.model, resolve_scope(tiny_model.model)
    batch = encode_batch(tiny_model.tokenizer, [r.prompt for r in RECORDS], [r.target_new for r in RECORDS])
    captured = capture_edit_factors(model, scope, batch)
    for layer in scope.layers:
        factors = captured.factors[layer.weight_name]
        assert factors.u.shape == (*batch.input_ids.shape, layer.d_in)
        assert factors.delta.shape == (*batch.input_ids.shape, layer.d_out)
    assert all(not module._forward_hooks for module in model.modules())


def test_captured_factors_reproduce_weight_grad_exactly(tiny_model):
    model, scope = tiny_model.model, resolve_scope(tiny_model.model)
    batch = encode_batch(tiny_model.tokenizer, [r.prompt for r in RECORDS], [r.target_new for r in RECORDS])
    captured = capture_edit_factors(model, scope, batch)
    # The reference: autograd's own weight gradient of the same loss (summed per-example mean NLL).
    leaves = {
        n: p.detach().requires_grad_(True) for n, p in model.named_parameters() if n in scope.weight_names
    }
    with torch.enable_grad():
        logits = scored_logits(model, batch, weights=leaves)
        nll = token_nll(logits, batch.scored_targets)
        loss = per_example_mean(nll, batch.scored_example, len(batch)).sum()
        expected = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values())), strict=True))
    assert float(loss.detach()) == pytest.approx(float(captured.loss), rel=1e-5)
    for layer in scope.layers:
        gradient = captured.factors[layer.weight_name].gradient(layer.orientation)
        torch.testing.assert_close(gradient, expected[layer.weight_name], rtol=1e-5, atol=1e-7)


def test_capture_without_backward_reports_missing_gradient(tiny_llama):
    scope = resolve_scope(tiny_llama.model)
    with (
        pytest.raises(RuntimeError, match="no gradient reached"),
        capture_factors(tiny_llama.model, scope.weight_names) as capture,
    ):
        tiny_llama.model(input_ids=torch.tensor([[3, 4, 5]]))  # nothing requires grad
        capture.backward(torch.zeros((), requires_grad=True))


@pytest.mark.parametrize("layer_type", ["linear", "conv1d"])
def test_orientation_follows_layer_type_on_square_weights(layer_type):
    torch.manual_seed(0)
    layer = nn.Linear(6, 6, bias=False) if layer_type == "linear" else Conv1D(6, 6)
    holder = nn.Sequential(layer)
    info = describe_layer(holder, "0.weight")
    assert info.orientation is (Orientation.OUT_IN if layer_type == "linear" else Orientation.IN_OUT)
    u = torch.randn(5, 6)
    delta = torch.randn(5, 6)
    output = holder(u)
    (output * delta).sum().backward()  # d loss / d output == delta
    torch.testing.assert_close(outer_sum(u, delta, info.orientation), layer.weight.grad)
    # the other orientation is the transpose, so a shape-based guess would silently be wrong here
    assert not torch.allclose(outer_sum(u, delta, info.orientation).T, layer.weight.grad)


def test_untrained_network_is_identity_and_zero_step_changes_nothing(tiny_model):
    editor = _editor(tiny_model, init_step_size=0.0)
    scope = editor.scope
    batch = encode_batch(tiny_model.tokenizer, ["The capital of France is"], ["Rome"])
    captured = capture_edit_factors(tiny_model.model, scope, batch)
    transformed = transform_factors(editor.network.eval(), captured)
    for name, (u_tilde, delta_tilde) in transformed.items():
        u, delta = captured.factors[name].rows(captured.token_mask)
        assert torch.equal(u_tilde, u) and torch.equal(delta_tilde, delta)
    before = {n: p.clone() for n, p in tiny_model.model.named_parameters()}
    result = editor.edit(tiny_model.model, tiny_model.tokenizer, RECORDS[:1])
    assert all(torch.count_nonzero(delta) == 0 for delta in result.deltas.values())
    with result.applied(tiny_model.model):
        assert all(torch.equal(p, before[n]) for n, p in tiny_model.model.named_parameters())


@pytest.mark.parametrize("aggregation", ["sum", "least_squares"])
def test_identity_editor_edit_lowers_the_edit_loss(tiny_model, aggregation):
    editor = _editor(tiny_model, init_step_size=1e-2, aggregation=aggregation)
    before = _edit_loss(tiny_model, RECORDS)
    result = editor.edit(tiny_model.model, tiny_model.tokenizer, RECORDS)
    with result.applied(tiny_model.model):
        after = _edit_loss(tiny_model, RECORDS)
    assert after < before


def test_batch_edit_sums_single_edit_pseudo_gradients(tiny_llama):
    editor = _editor(tiny_llama, init_step_size=1e-2, aggregation="sum")
    together = editor.edit(tiny_llama.model, tiny_llama.tokenizer, RECORDS)
    separate = [editor.edit(tiny_llama.model, tiny_llama.tokenizer, [record]) for record in RECORDS]
    for name, delta in together.deltas.items():
        torch.testing.assert_close(
            delta, sum(result.deltas[name] for result in separate), rtol=1e-4, atol=1e-7
        )


def test_merge_then_undo_is_bit_exact_and_nan_edit_is_refused(tiny_model):
    model = tiny_model.model
    original = {n: p.clone() for n, p in model.named_parameters()}
    result = _editor(tiny_model, init_step_size=1e-2).edit(model, tiny_model.tokenizer, RECORDS)
    handle = result.apply(model)
    assert any(not torch.equal(p, original[n]) for n, p in model.named_parameters())
    handle.undo()
    assert all(torch.equal(p, original[n]) for n, p in model.named_parameters())

    editor = _editor(tiny_model, init_step_size=1e-2)
    with torch.no_grad():
        editor.network.step_sizes.fill_(math.nan)
    with pytest.raises(NonFiniteEditError):
        editor.edit(model, tiny_model.tokenizer, RECORDS).apply(model)
    assert all(torch.equal(p, original[n]) for n, p in model.named_parameters())


@pytest.mark.parametrize("aggregation", ["sum", "least_squares"])
def test_checkpoint_round_trip_and_mismatched_base_refused(tiny_llama, tiny_gpt2, tmp_path, aggregation):
    editor = _editor(tiny_llama, init_step_size=1e-2, aggregation=aggregation)
    with torch.no_grad():  # make the network non-trivial so a broken load would show
        for parameter in editor.network.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    editor.network.transforms[next(iter(editor.network.transforms))].u_normalizer.update(torch.randn(8, 32))
    save_editor(tmp_path / "editor", editor, base_fingerprint=tiny_llama.fingerprint, model_type="llama")
    loaded = load_editor(tmp_path / "editor", base_fingerprint=tiny_llama.fingerprint)
    expected = editor.edit(tiny_llama.model, tiny_llama.tokenizer, RECORDS)
    actual = loaded.edit(tiny_llama.model, tiny_llama.tokenizer, RECORDS)
    for name in expected.deltas:
        assert torch.equal(expected.deltas[name], actual.deltas[name])
    assert not any(p.suffix == ".pt" or p.suffix == ".pkl" for p in (tmp_path / "editor").iterdir())
    with pytest.raises(EditorMismatchError, match="trained for base model"):
        load_editor(tmp_path / "editor", base_fingerprint=tiny_gpt2.fingerprint)
