"""Shared fixtures: tiny random Llama and GPT-2 models with tokenizers trained in code (no downloads)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import pytest

from tests.tiny import TinyKind, make_tiny_model


@pytest.fixture(scope="session")
def tiny_llama():
    """A 4-block random Llama with a SentencePiece-style (metaspace) tokenizer."""
    return make_tiny_model(TinyKind.LLAMA)


@pytest.fixture(scope="session")
def tiny_gpt2():
    """A 4-block random GPT-2 (Conv1D MLPs) with a byte-level BPE tokenizer."""
    return make_tiny_model(TinyKind.GPT2)


@pytest.fixture(params=[TinyKind.LLAMA, TinyKind.GPT2], ids=lambda kind: kind.value, scope="session")
def tiny_model(request):
    """Each tiny model in turn: tests using it run once per architecture."""
    return make_tiny_model(request.param)
