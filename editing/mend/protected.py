"""Protected knowledge for least-squares aggregation: per edited weight, the second moment ``C = E[k k^T]``
of its inputs over text that edits must leave alone.

Two sources, each averaged over its own tokens and then mixed (``fact_share`` of the facts):

* general text, every position: keeps the update off ordinary language (perplexity);
* factual prompts that the base model already answers right, every position of prompt and answer: keeps
  the update off known facts, above all those that share a relation with an edit (the hard neighbours).

Measured once per base model (a few seconds of forward passes per thousand tokens on a CPU) and stored as
safetensors beside the editor, with the base model's fingerprint: loading it for another model is refused.
Which texts and prompts are used is the caller's choice; ``editing.data.protected_sources`` picks them so
that nothing a gate or a benchmark scores is among them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from editing.core.forward import eval_mode
from editing.core.targets import EditScope
from editing.core.tokens import collate, encode_example, pad_token_id
from editing.data.records import PromptAnswer
from editing.mend.aggregation import ProtectedBasis

LOGGER = logging.getLogger(__name__)
PROTECTED_FORMAT = "mend-protected-keys/1"
PROTECTED_FILE = "protected_keys.safetensors"
Progress = Callable[[int, int], None]


class ProtectedKeysError(ValueError):
    """Protected keys are missing, malformed, or belong to another base model."""


@dataclass
class ProtectedKeys:
    """``second_moments[name]`` (d_in, d_in) float64 for each edited weight, and where they came from."""

    second_moments: dict[str, torch.Tensor]
    base_fingerprint: str
    info: dict[str, Any] = field(default_factory=dict)  # token counts per source, facts asked and right

    def mean_eigenvalue(self, name: str) -> float:
        """``trace(C) / d_in``: the scale of a weight's keys, which makes the learned ridge scale-free."""
        moment = self.second_moments[name]
        return float(moment.diagonal().sum()) / moment.shape[0]

    def bases(self) -> dict[str, ProtectedBasis]:
        """Eigendecompositions for training (one ``eigh`` per distinct weight input: a second or two)."""
        return {name: ProtectedBasis.of(moment) for name, moment in self.second_moments.items()}

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / PROTECTED_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {
            name: moment.to(torch.float64).contiguous() for name, moment in self.second_moments.items()
        }
        metadata = {
            "format": PROTECTED_FORMAT,
            "base_fingerprint": self.base_fingerprint,
            "info": json.dumps(self.info),
        }
        save_file(tensors, str(path), metadata=metadata)
        return path

    @classmethod
    def load(cls, path: str | Path, *, base_fingerprint: str | None = None) -> ProtectedKeys:
        """Read ``path`` (a file, or a directory holding ``protected_keys.safetensors``)."""
        path = Path(path)
        path = path / PROTECTED_FILE if path.is_dir() else path
        if not path.is_file():
            raise ProtectedKeysError(f"{path}: no protected keys")
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        if metadata.get("format") != PROTECTED_FORMAT:
            raise ProtectedKeysError(f"{path}: not a {PROTECTED_FORMAT} file")
        stored = metadata.get("base_fingerprint", "")
        if base_fingerprint is not None and stored != base_fingerprint:
            raise ProtectedKeysError(
                f"{path}: protected keys of base model {stored[:12]}, not {base_fingerprint[:12]}"
            )
        for name, moment in tensors.items():
            if moment.ndim != 2 or moment.shape[0] != moment.shape[1] or not torch.isfinite(moment).all():
                raise ProtectedKeysError(f"{path}: {name} is not a finite square matrix")
        return cls(tensors, stored, json.loads(metadata.get("info", "{}")))


class _MomentSum:
    """Running ``sum k k^T`` and token count per weight, in float64 (each batch's product in float32)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.tokens = 0

    def add(self, inputs: dict[str, torch.Tensor], mask: torch.Tensor) -> None:
        """inputs[name]: (batch, seq, d_in); mask: (batch, seq) bool, the positions to count."""
        for name, hidden in inputs.items():
            keys = hidden[mask].float()  # (tokens, d_in)
            product = (keys.transpose(0, 1) @ keys).double()  # (d_in, d_in)
            self.sums[name] = self.sums[name] + product if name in self.sums else product
        self.tokens += int(mask.sum())

    def mean(self) -> dict[str, torch.Tensor]:
        return {name: total / max(self.tokens, 1) for name, total in self.sums.items()}


@contextmanager
def layer_inputs(model: nn.Module, scope: EditScope) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, ``inputs[weight_name]`` holds each edited layer's last input; hooks always removed."""
    inputs: dict[str, torch.Tensor] = {}
    handles = []

    def hook_for(name: str):
        def keep(_module, args):
            inputs[name] = args[0].detach()

        return keep

    try:
        for layer in scope.layers:
            module = model.get_submodule(layer.module_name)
            handles.append(module.register_forward_pre_hook(hook_for(layer.weight_name)))
        yield inputs
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def _text_moments(model, tokenizer, scope, texts, max_tokens, batch_size, progress) -> _MomentSum:
    total = _MomentSum()
    device = next(model.parameters()).device
    with layer_inputs(model, scope) as inputs:
        for start in range(0, len(texts), batch_size):
            encoded = [
                (tokenizer(text)["input_ids"][:max_tokens], 1) for text in texts[start : start + batch_size]
            ]
            batch = collate(encoded, pad_token_id(tokenizer)).to(device)
            model.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
            total.add(inputs, batch.attention_mask.bool())
            progress(min(start + batch_size, len(texts)))
    return total


def known_fact_batches(model, tokenizer, scope, facts, batch_size):
    """Per chunk of ``facts``: (chunk, batch, known (batch,) bool, inputs[weight] (batch, seq, d_in)).
    A fact is known when the model's greedy answer starts with the answer's first token (a 135M model
    completes few multi-token answers exactly when teacher forced, and the first token is what it says)."""
    device = next(model.parameters()).device
    head = model.get_output_embeddings()
    with layer_inputs(model, scope) as inputs:
        for start in range(0, len(facts), batch_size):
            chunk = facts[start : start + batch_size]
            batch = collate(
                [encode_example(tokenizer, f.prompt, f.answer) for f in chunk], pad_token_id(tokenizer)
            ).to(device)
            hidden = model.base_model(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False
            ).last_hidden_state  # (batch, seq, hidden)
            first = batch.prediction_mask.int().argmax(dim=1)  # (batch,) position predicting the answer
            rows = torch.arange(len(chunk), device=device)
            known = head(hidden[rows, first]).argmax(dim=-1) == batch.input_ids[rows, first + 1]  # (batch,)
            yield chunk, batch, known, inputs


@torch.no_grad()
def _fact_moments(model, tokenizer, scope, facts, batch_size, progress) -> tuple[_MomentSum, int]:
    """Moments over every position of the facts the model answers right."""
    total, right, done = _MomentSum(), 0, 0
    for chunk, batch, known, inputs in known_fact_batches(model, tokenizer, scope, facts, batch_size):
        total.add(inputs, known[:, None] & batch.attention_mask.bool())
        right += int(known.sum())
        done += len(chunk)
        progress(done)
    return total, right


def collect_protected_keys(
    model: nn.Module,
    tokenizer,
    scope: EditScope,
    base_fingerprint: str,
    *,
    texts: Sequence[str],
    facts: Sequence[PromptAnswer],
    fact_share: float = 0.5,
    max_text_tokens: int = 64,
    batch_size: int = 32,
    on_progress: Progress | None = None,
) -> ProtectedKeys:
    """Measure each edited weight's protected second moment on ``texts`` and the ``facts`` the model knows."""
    if not texts and not facts:
        raise ProtectedKeysError("protected keys need general texts or facts")
    if not 0 <= fact_share <= 1:
        raise ProtectedKeysError(f"fact_share must be in [0, 1], got {fact_share}")
    report = on_progress or (lambda *_: None)
    work = len(texts) + len(facts)
    # Batched in order of length (the moments are sums, so order does not matter): a prompt padded to a
    # paragraph's length costs as much as the paragraph.
    texts = sorted(texts, key=len)
    facts = sorted(facts, key=lambda fact: len(fact.prompt) + len(fact.answer))
    with eval_mode(model):
        text = _text_moments(
            model, tokenizer, scope, texts, max_text_tokens, batch_size, lambda done: report(done, work)
        )
        fact, right = _fact_moments(
            model, tokenizer, scope, facts, batch_size, lambda done: report(len(texts) + done, work)
        )
    if not text.tokens and not fact.tokens:
        raise ProtectedKeysError(f"none of {len(facts)} facts is answered right and there is no text")
    shares = {"text": 1 - fact_share if fact.tokens else 1.0, "facts": fact_share if text.tokens else 1.0}
    parts = [(shares["text"], text.mean()), (shares["facts"], fact.mean())]
    moments = {
        name: sum(share * part[name] for share, part in parts if name in part) for name in scope.weight_names
    }
    info = {
        "texts": len(texts),
        "text_tokens": text.tokens,
        "facts_asked": len(facts),
        "facts_right": right,
        "fact_tokens": fact.tokens,
        "fact_share": shares["facts"],
        "max_text_tokens": max_text_tokens,
    }
    LOGGER.info("protected keys: %s", info)
    return ProtectedKeys(moments, base_fingerprint, info)
