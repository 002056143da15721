"""Shared fixtures: tiny random Llama and GPT-2 models with tokenizers trained in code (no downloads)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
# Tiny models run fastest on one thread: their operations are too small to split, and on a busy machine
# every parallel region waits for its slowest thread (a tiny trainer ran 13x slower on two threads while
# other processes shared the cores). Set before torch is imported; real-model tests take every core back.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

pytest_plugins = ["tests.integration.mlflow_fixtures", "tests.pipeline_fixtures"]

# torch and transformers load only when a test asks for a tiny model, so pure-I/O tests start fast.


@pytest.fixture(autouse=True)
def _real_model_threads(request):
    """Tests of the real model use every core (its matrix products are worth splitting)."""
    if request.node.get_closest_marker("real_model") is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    yield
    torch.set_num_threads(before)


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
