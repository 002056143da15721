"""Speed benchmarks: the cost of one MEND edit against a plain forward+backward, and an editor
training step with and without the frozen-prefix cache (same step, same batch)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from editing.config import EditorConfig, TrainConfig
from editing.core.models import LoadedModel
from editing.core.targets import resolve_scope
from editing.core.tokens import encode_batch
from editing.data.records import EditRecord
from editing.data.training_data import encode_training_examples
from editing.mend.editor import MendEditor
from editing.mend.editor_net import MendNetwork
from editing.training.objective import consecutive_groups
from editing.training.trainer import EditorTrainer


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(function: Callable[[], Any], repeats: int, warmup: int = 2) -> list[float]:
    """Wall-clock seconds of each of ``repeats`` calls, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        function()
    seconds = []
    for _ in range(repeats):
        _synchronize()
        started = time.perf_counter()
        function()
        _synchronize()
        seconds.append(time.perf_counter() - started)
    return seconds


def _forward_backward(loaded: LoadedModel, record: EditRecord, parameters: Sequence[torch.nn.Parameter]):
    """A plain fine-tuning pass: full forward with labels, backward into ``parameters``."""
    model = loaded.model
    device = next(model.parameters()).device
    batch = encode_batch(loaded.tokenizer, [record.prompt], [record.target_new]).to(device)

    def run() -> None:
        for parameter in parameters:
            parameter.requires_grad_(True)
        try:
            loss = model(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels
            ).loss
            loss.backward()
        finally:
            for parameter in parameters:
                parameter.requires_grad_(False)
                parameter.grad = None

    return run


def edit_latency(
    loaded: LoadedModel, editor: MendEditor, records: Sequence[EditRecord], repeats: int
) -> dict:
    """Median seconds per record of: MEND edit + merge, full forward+backward, and forward+backward
    reaching only the edited weights (the least a gradient-based edit can cost)."""
    model = loaded.model
    edited = [p for n, p in model.named_parameters() if n in set(editor.scope.weight_names)]
    results: dict[str, list[float]] = {
        "mend_edit": [],
        "forward_backward_all": [],
        "forward_backward_edited": [],
    }
    for record in records:

        def mend_edit(record=record) -> None:
            editor.edit(model, loaded.tokenizer, [record]).apply(model).undo()

        results["mend_edit"].append(statistics.median(timed(mend_edit, repeats)))
        floor = _forward_backward(loaded, record, list(model.parameters()))
        results["forward_backward_all"].append(statistics.median(timed(floor, repeats)))
        narrow = _forward_backward(loaded, record, edited)
        results["forward_backward_edited"].append(statistics.median(timed(narrow, repeats)))
    summary = {name: statistics.median(values) for name, values in results.items()}
    summary["ratio_vs_forward_backward_all"] = summary["mend_edit"] / summary["forward_backward_all"]
    summary["ratio_vs_forward_backward_edited"] = summary["mend_edit"] / summary["forward_backward_edited"]
    summary["records"] = len(records)
    return summary


def training_step_speed(
    loaded: LoadedModel, records: Sequence[EditRecord], batch_size: int, repeats: int, protected=None
) -> dict:
    """Seconds of one training step (objective, backward, Adam) on the same batch, with the prefix
    cache (warm) and without it; the one-off cost of filling the cache is reported separately.
    Single edits with the paper's aggregation unless ``protected`` keys are given (least squares)."""
    scope = resolve_scope(loaded.model)
    examples = encode_training_examples(loaded.tokenizer, records)
    network = MendNetwork(scope.layers, EditorConfig(aggregation="least_squares" if protected else "sum"))
    config = TrainConfig(batch_size=batch_size)
    trainer = EditorTrainer(
        loaded.model, loaded.tokenizer, scope, network, examples, examples[:1], config, protected=protected
    )
    batch = consecutive_groups(examples[:batch_size], 1)
    started = time.perf_counter()
    trainer.cache.warm([sequence for example in examples[:batch_size] for sequence in example.sequences()])
    fill_seconds = time.perf_counter() - started

    def step() -> None:
        trainer.optimizer.zero_grad(set_to_none=True)
        loss, _ = trainer.objective(batch)
        loss.backward()
        trainer.optimizer.step()

    trainer.network.train()
    cached = timed(step, repeats)
    trainer.config = config.replace(prefix_cache=False)
    uncached = timed(step, repeats)
    return {
        "batch_size": batch_size,
        "step_seconds_with_cache": statistics.median(cached),
        "step_seconds_without_cache": statistics.median(uncached),
        "speedup": statistics.median(uncached) / statistics.median(cached),
        "cache_fill_seconds_for_batch": fill_seconds,
        "repeats": repeats,
    }
