"""Shared fixtures: tiny random Llama and GPT-2 models with tokenizers trained in code (no downloads)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import pytest

pytest_plugins = ["tests.integration.mlflow_fixtures", "tests.pipeline_fixtures"]

# torch and transformers load only when a test asks for a tiny model, so pure-I/O tests start fast.


def _tiny(kind_name: str):
    from tests.tiny import TinyKind, make_tiny_model

    return make_tiny_model(TinyKind(kind_name))


@pytest.fixture(scope="session")
def tiny_llama():
    """A 4-block random Llama with a SentencePiece-style (metaspace) tokenizer."""
    return _tiny("llama")


@pytest.fixture(scope="session")
def tiny_gpt2():
    """A 4-block random GPT-2 (Conv1D MLPs) with a byte-level BPE tokenizer."""
    return _tiny("gpt2")


@pytest.fixture(params=["llama", "gpt2"], scope="session")
def tiny_model(request):
    """Each tiny model in turn: tests using it run once per architecture."""
    return _tiny(request.param)
