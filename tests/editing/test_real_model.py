"""Behaviour of the real default model (SmolLM2-135M-Instruct from the local cache)."""

from __future__ import annotations

import functools

import pytest
import torch

from editing.core.models import LoadedModel, default_model_dir, fingerprint, load_model

pytestmark = pytest.mark.real_model


def skip_without_real_model() -> None:
    if not (default_model_dir() / "config.json").is_file():
        pytest.skip(f"real model not in {default_model_dir()}; run `mend model pull` to fetch it")


@functools.cache
def _load() -> LoadedModel:
    return load_model("default")


def real_model() -> LoadedModel:
    """The real model, loaded once per test session (tests must not leave it edited)."""
    skip_without_real_model()
    return _load()


def test_completes_capital_of_france():
    loaded = real_model()
    inputs = loaded.tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        output = loaded.model.generate(
            **inputs, max_new_tokens=3, do_sample=False, pad_token_id=loaded.tokenizer.pad_token_id
        )
    completion = loaded.tokenizer.decode(output[0, inputs["input_ids"].shape[1] :])
    assert completion.startswith(" Paris"), completion


def test_default_ft_edits_the_real_model():
    """The tuned FT defaults make SmolLM2 produce CounterFact targets, and every edit is undone."""
    from editing.baselines.finetune import build_baseline
    from editing.data.records import read_records
    from editing.evaluation.evaluate import run_single_edits
    from tests.editing.test_data import DATA

    path = DATA / "counterfact_easyedit_splits" / "counterfact-val.json"
    if not path.is_file():
        pytest.skip(f"{path} is not on this machine")
    loaded = real_model()
    records = read_records(path, limit=2).records
    evaluation = run_single_edits(build_baseline("ft"), loaded.model, loaded.tokenizer, records)
    assert [row["rewrite_acc"] for row in evaluation.rows] == [1.0, 1.0]
    assert all(row["pre_rewrite_acc"] < 1.0 for row in evaluation.rows)
    assert fingerprint(loaded.model) == loaded.fingerprint
