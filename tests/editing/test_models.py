"""Loading models without a hub, and fingerprints that identify a model's weights."""

from __future__ import annotations

import copy

import pytest
import torch

from editing.core.models import LoadedModel, ModelNotAvailableError, fingerprint, load_model


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def saved_model(request, tmp_path_factory):
    """A tiny model saved as safetensors + tokenizer files, as ``mend model pull`` would leave it."""
    from tests.tiny import TinyKind, make_tiny_model

    shared = make_tiny_model(TinyKind(request.param))
    # A copy: save_pretrained writes into the config, and the shared tiny model must stay as it is.
    model = copy.deepcopy(shared.model)
    folder = tmp_path_factory.mktemp(f"saved-{request.param}")
    model.save_pretrained(folder)
    shared.tokenizer.save_pretrained(folder)
    return LoadedModel(model, shared.tokenizer, fingerprint(model), "saved"), folder


def logits_of(model, tokenizer) -> torch.Tensor:
    inputs = tokenizer("The capital of France is Paris.", return_tensors="pt")
    with torch.no_grad():
        return model(input_ids=inputs["input_ids"]).logits


def test_round_trip_preserves_logits_and_fingerprint(saved_model):
    original, folder = saved_model
    reloaded = load_model(folder)
    assert reloaded.fingerprint == original.fingerprint
    assert reloaded.source == str(folder)
    assert torch.equal(
        logits_of(reloaded.model, reloaded.tokenizer), logits_of(original.model, original.tokenizer)
    )
    # Loaded models are ready to score: eval mode, frozen, right padding with a pad token.
    assert not reloaded.model.training
    assert not any(p.requires_grad for p in reloaded.model.parameters())
    assert reloaded.tokenizer.padding_side == "right" and reloaded.tokenizer.pad_token is not None


def test_fingerprint_is_stable_and_sensitive(saved_model):
    original, folder = saved_model
    assert load_model(folder).fingerprint == load_model(folder).fingerprint == fingerprint(original.model)
    changed = copy.deepcopy(original.model)
    with torch.no_grad():
        name, parameter = next(iter(changed.named_parameters()))
        parameter.view(-1)[0] += 1e-3
    assert fingerprint(changed) != original.fingerprint, f"changing one element of {name} went unnoticed"


def test_hub_id_offline_says_how_to_provide_the_model(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError) as caught:
        load_model("mend-fix-tests/no-such-model")
    message = str(caught.value)
    assert "mend-fix-tests/no-such-model" in message
    assert "offline" in message and "safetensors" in message and "mend model pull" in message


@pytest.mark.parametrize("name", ["notes.txt", "weights.bin"])
def test_file_that_is_not_a_model(tmp_path, name):
    path = tmp_path / name
    path.write_text("not a model")
    with pytest.raises(ModelNotAvailableError, match="not a model directory"):
        load_model(path)


def test_missing_path(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="not a model directory"):
        load_model(tmp_path / "missing")


def test_directory_that_is_not_a_model(tmp_path):
    (tmp_path / "readme.md").write_text("no model here")
    with pytest.raises(ModelNotAvailableError, match=r"config\.json"):
        load_model(tmp_path)


def test_saving_does_not_change_the_fingerprint(tmp_path):
    from tests.tiny import TinyKind, make_tiny_model

    model = copy.deepcopy(make_tiny_model(TinyKind.LLAMA).model)
    before = fingerprint(model)
    model.save_pretrained(tmp_path)
    assert fingerprint(model) == before


def test_default_model_missing_says_to_pull(monkeypatch, tmp_path):
    monkeypatch.setenv("MEND_CACHE_DIR", str(tmp_path))
    with pytest.raises(ModelNotAvailableError, match="mend model pull"):
        load_model("default")
