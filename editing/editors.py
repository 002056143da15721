"""The editors the CLI, the pipeline and the benchmarks can swap: one registry, no string dispatch elsewhere."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from editing.core.apply import Editor
from editing.core.models import LoadedModel
from editing.data.records import PromptAnswer

EDITOR_NAMES = ("mend", "ft", "ft-kl")


def build_editor(
    name: str,
    loaded: LoadedModel,
    *,
    editor_path: str | Path | None = None,
    kl_reference: Sequence[PromptAnswer] = (),
    **baseline_settings: Any,
) -> Editor:
    """An editor for ``loaded``. MEND needs a checkpoint trained for exactly this base model; FT+KL
    keeps ``kl_reference`` prompts in place (by default each record's own locality probes)."""
    if name == "mend":
        from editing.training.checkpoint import load_editor

        if editor_path is None:
            raise ValueError("the mend editor needs --editor-path: a checkpoint from `mend train-editor`")
        device = next(loaded.model.parameters()).device
        return load_editor(editor_path, base_fingerprint=loaded.fingerprint, device=device)
    if name in ("ft", "ft-kl"):
        from editing.baselines.finetune import build_baseline

        return build_baseline(name, kl_reference=kl_reference, **baseline_settings)
    raise ValueError(f"unknown editor {name!r}; choose one of {', '.join(EDITOR_NAMES)}")
