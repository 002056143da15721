"""FT and FT+KL: they make the tiny models produce new targets, and return deltas without touching the model."""

from __future__ import annotations

import pytest
import torch

from editing.baselines.finetune import BASELINES, FineTuneEditor, build_baseline, lowest_block
from editing.config import ConfigError, FineTuneConfig
from editing.core.apply import EditResult
from editing.core.models import fingerprint
from editing.data.records import EditRecord, PromptAnswer
from editing.evaluation.evaluate import evaluate_edit, score_records
from tests.editing.test_evaluate import edited_copy

# Tiny random models need larger steps than a trained model to move their argmax.
TINY = FineTuneConfig(steps=20, lr=1e-2)
RECORDS = [
    EditRecord(
        "france",
        "The capital of France is",
        "Rome",
        locality=(PromptAnswer("The capital of Italy is", "Rome"), PromptAnswer("Sega makes", "games")),
    ),
    EditRecord(
        "potter",
        "Harry Potter was written by",
        "Microsoft Windows",
        locality=(
            PromptAnswer("BBC One, by", "BBC"),
            PromptAnswer("The mother tongue of Danielle Darrieux is", "French"),
        ),
    ),
    EditRecord(
        "toko",
        "Toko Yasuda, the guitar player, plays the",
        "piano",
        locality=(PromptAnswer("Microsoft Windows is developed by", "Microsoft"),),
    ),
]


def rewrite_accuracies(loaded, result: EditResult, records) -> list[float]:
    with result.applied(loaded.model) as model:
        return [scores.rewrite.accuracy for scores in score_records(model, loaded.tokenizer, records)]


@pytest.mark.parametrize("name", ["ft", "ft-kl"])
def test_single_edit_reaches_the_new_target(tiny_model, name):
    editor = build_baseline(name, steps=TINY.steps, lr=TINY.lr)
    assert editor.name == name
    before = [s.rewrite.accuracy for s in score_records(tiny_model.model, tiny_model.tokenizer, RECORDS[:1])]
    result = editor.edit(tiny_model.model, tiny_model.tokenizer, RECORDS[:1])
    assert before != [1.0]
    assert rewrite_accuracies(tiny_model, result, RECORDS[:1]) == [1.0]
    assert set(result.diagnostics) >= {"final_loss", "final_nll", "final_kl", "steps", "seconds"}
    assert result.diagnostics["steps"] == TINY.steps
    assert (result.diagnostics["final_kl"] > 0) == (name == "ft-kl")


def test_batch_edit_reaches_every_target(tiny_model):
    result = FineTuneEditor(TINY.replace(steps=40)).edit(tiny_model.model, tiny_model.tokenizer, RECORDS)
    assert rewrite_accuracies(tiny_model, result, RECORDS) == [1.0, 1.0, 1.0]


def test_edit_returns_deltas_and_leaves_the_model_alone(tiny_model):
    model = tiny_model.model
    flags = [p.requires_grad for p in model.parameters()]
    result = build_baseline("ft-kl", steps=3, lr=TINY.lr).edit(model, tiny_model.tokenizer, RECORDS[:2])
    assert fingerprint(model) == tiny_model.fingerprint
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    expected = tiny_model.preset.weight_names(len(model.get_submodule(tiny_model.preset.blocks)))
    assert list(result.deltas) == list(expected)
    parameters = dict(model.named_parameters())
    for name, delta in result.deltas.items():
        assert delta.shape == parameters[name].shape and not delta.requires_grad
        assert delta.abs().max() > 0
    # Merging and undoing restores the original weights bit for bit.
    with result.applied(model):
        assert fingerprint(model) != tiny_model.fingerprint
    assert fingerprint(model) == tiny_model.fingerprint


def test_prefix_gives_the_same_deltas(tiny_model):
    config = TINY.replace(steps=5, locality_kl_weight=1.0)
    with_prefix = FineTuneEditor(config).edit(tiny_model.model, tiny_model.tokenizer, RECORDS[:2])
    without = FineTuneEditor(config, use_prefix=False).edit(
        tiny_model.model, tiny_model.tokenizer, RECORDS[:2]
    )
    for name, delta in with_prefix.deltas.items():
        torch.testing.assert_close(delta, without.deltas[name], rtol=0, atol=1e-6)


def test_custom_weight_names(tiny_model):
    names = tiny_model.preset.weight_names(len(tiny_model.model.get_submodule(tiny_model.preset.blocks)))[-1:]
    result = FineTuneEditor(TINY.replace(steps=2), weight_names=names).edit(
        tiny_model.model, tiny_model.tokenizer, RECORDS[:1]
    )
    assert list(result.deltas) == list(names)


def test_kl_term_keeps_locality_closer(tiny_model):
    """Same records, same steps: FT+KL moves the locality distributions less than FT."""
    model, tokenizer = tiny_model.model, tiny_model.tokenizer
    plain = FineTuneEditor(TINY).edit(model, tokenizer, RECORDS[:2])
    with_kl = FineTuneEditor(TINY.replace(locality_kl_weight=10.0)).edit(model, tokenizer, RECORDS[:2])

    def locality(result: EditResult) -> tuple[float, float]:
        aggregates = evaluate_edit(model, edited_copy(model, result), tokenizer, RECORDS[:2]).aggregates
        return aggregates["locality_kl"], aggregates["locality_unchanged"]

    plain_kl, plain_unchanged = locality(plain)
    kl_kl, kl_unchanged = locality(with_kl)
    assert kl_kl < plain_kl
    assert kl_unchanged >= plain_unchanged
    assert rewrite_accuracies(tiny_model, with_kl, RECORDS[:2]) == [1.0, 1.0]


def test_registry_and_overrides():
    assert set(BASELINES) == {"ft", "ft-kl"}
    assert build_baseline("ft").name == "ft" and build_baseline("ft").config.locality_kl_weight == 0
    assert build_baseline("ft-kl").config == build_baseline("ft").config.replace(locality_kl_weight=1.0)
    editor = build_baseline("ft-kl", steps=7, lr=0.5, weight_names=["model.layers.1.mlp.up_proj.weight"])
    assert editor.config.steps == 7 and editor.config.lr == 0.5
    assert editor.weight_names == ("model.layers.1.mlp.up_proj.weight",)
    assert build_baseline("ft-kl", locality_kl_weight=0.0).name == "ft"
    with pytest.raises(ConfigError, match="available"):
        build_baseline("rome")
    with pytest.raises(ConfigError, match="steps"):
        build_baseline("ft", steps=0)


def test_lowest_block():
    assert lowest_block(["model.layers.3.mlp.w", "model.layers.1.mlp.w"], "model.layers") == 1
    assert lowest_block(["model.layers.3.mlp.w", "lm_head.weight"], "model.layers") is None
    assert lowest_block(["model.layers_extra.3.w"], "model.layers") is None


def test_no_records_is_an_error(tiny_llama):
    with pytest.raises(ValueError, match="at least one record"):
        FineTuneEditor(TINY).edit(tiny_llama.model, tiny_llama.tokenizer, [])
