"""Train a MEND editor: Adam on the network and (at its own learning rate) the step sizes.

Progress leaves only through the ``on_metrics(step, metrics)`` and ``on_progress(step, total)``
callbacks; the trainer never prints and knows nothing of tracking libraries.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn

from editing.config import TrainConfig
from editing.core.forward import fast_bf16
from editing.core.prefix import PrefixCache
from editing.core.targets import EditScope
from editing.core.tokens import TokenBatch, pad_token_id
from editing.data.training_data import TrainingExample
from editing.mend.editor_net import MendNetwork
from editing.mend.protected import ProtectedKeys
from editing.training.groups import GroupSampler, relation_groups
from editing.training.objective import EditGroup, LossWeights, consecutive_groups, editing_objective
from editing.training.schedule import learning_rate_factor, set_learning_rates, training_progress

LOGGER = logging.getLogger(__name__)
MetricsCallback = Callable[[int, dict[str, float]], None]
WARM_AHEAD_STEPS = 50  # steps whose frozen prefixes are computed together


def success_score(metrics: dict[str, float], prefix: str = "") -> float:
    """Mean of edit, rephrase and locality success (what the editor is for)."""
    names = ("rewrite_acc", "rephrase_acc", "locality_unchanged")
    return sum(metrics[prefix + name] for name in names) / len(names)


def selection_value(metrics: dict[str, float], select_by: str) -> float:
    """Higher is better: the validation ``score`` or -loss."""
    return -metrics["loss"] if select_by == "loss" else metrics["score"]


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class TrainerState:
    """Everything besides tensors that an exact resume needs."""

    step: int = 0  # optimizer steps taken (batches are a function of the seed and the step)
    best_val: float = -math.inf  # best validation value of ``TrainConfig.select_by`` (higher is better)
    best_step: int = 0
    validations_without_improvement: int = 0
    skipped_steps: int = 0
    elapsed_seconds: float = 0.0
    stop_reason: str = ""
    validations: list[dict[str, float]] = field(default_factory=list)


class EditorTrainer:
    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        scope: EditScope,
        network: MendNetwork,
        train_examples: Sequence[TrainingExample],
        val_examples: Sequence[TrainingExample],
        config: TrainConfig,
        *,
        on_metrics: MetricsCallback | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        protected: ProtectedKeys | None = None,
    ):
        if not train_examples or not val_examples:
            raise ValueError("need at least one training and one validation example")
        self.device = pick_device(config.device)
        self.bf16 = config.bf16_autocast and fast_bf16(self.device)
        model = model.to(self.device)
        if self.bf16 and self.device.type == "cpu":
            # Autocast casts frozen weights again for every product on a CPU (its cast cache keeps only
            # trainable ones): a bfloat16 copy of the frozen model casts them once. The caller's model
            # is left as it is; the editor trained here edits it in float32.
            model = copy.deepcopy(model).to(torch.bfloat16)
        self.model, self.scope, self.config = model, scope, config
        self.network = network.to(self.device)
        self.train_examples, self.val_examples = (
            list(train_examples),
            list(val_examples)[: config.val_records],
        )
        self.pad_id = pad_token_id(tokenizer)
        self.on_metrics, self.on_progress = on_metrics or (lambda *_: None), on_progress or (lambda *_: None)
        scalars = {id(network.step_sizes)} | {id(p) for p in network.solver_parameters()}
        editor_parameters = [p for p in network.parameters() if id(p) not in scalars]
        self.optimizer = torch.optim.Adam(
            [
                {"params": editor_parameters, "lr": config.editor_lr},
                {"params": [network.step_sizes], "lr": config.step_size_lr},
                {"params": network.solver_parameters(), "lr": config.solver_lr},
            ],
            # The editor has ~16M parameters; the fused kernel makes Adam's update ~6x cheaper on CPU,
            # where the unfused one otherwise costs a fifth of a cached training step.
            fused=self.device.type in ("cpu", "cuda"),
        )
        self.cache = PrefixCache(self.model, scope.blocks_path, scope.first_block, self.pad_id)
        self.state = TrainerState()
        self.best_network: dict[str, torch.Tensor] | None = None
        self.weights = LossWeights(
            config.edit_loss_weight, config.locality_loss_weight, config.general_text_loss_weight,
            config.same_subject_loss_weight,
        )  # fmt: skip
        self.protection = _protection(network, protected, self.device)
        self.sampler = GroupSampler(
            self.train_examples, sizes=config.group_sizes, same_relation=config.same_relation_fraction,
            scored_per_step=config.batch_size, seed=config.seed,
        )  # fmt: skip

    def _prefix_for(self, batch: TokenBatch):
        return self.cache.prefix(batch) if self.config.prefix_cache else None

    def _autocast(self):
        if self.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def _draws(self) -> range:
        """Which of a step's ``batch_shards`` sampler draws this process computes (all of them here)."""
        return range(self.config.batch_shards)

    def _groups_of(self, step: int) -> list[EditGroup]:
        """The groups of optimizer step ``step`` (a pure function of the seed and the step)."""
        first = step * self.config.batch_shards
        groups = [group for draw in self._draws() for group in self.sampler.groups(first + draw)]
        if step % self.config.general_text_every == 0:
            return groups
        return [  # general text rides along on every n-th step only
            EditGroup(tuple(replace(e, general=None) for e in group.examples), group.scored)
            for group in groups
        ]

    def _next_groups(self) -> list[EditGroup]:
        step = self.state.step
        if self.config.prefix_cache and step % WARM_AHEAD_STEPS == 0:
            # The frozen prefixes of the next steps' sequences in one pass, batched by length: filled a
            # step at a time, a few dozen sequences of mixed lengths make small, padded batches.
            upcoming = range(step, step + WARM_AHEAD_STEPS)
            self.cache.warm(
                [ids for later in upcoming for g in self._groups_of(later) for ids in g.sequences()]
            )
        return self._groups_of(step)

    def objective(self, groups: Sequence[EditGroup], *, with_rewrite: bool = False):
        with self._autocast():
            return editing_objective(
                self.model, self.scope, self.network, groups, pad_id=self.pad_id,
                prefix_for=self._prefix_for, weights=self.weights, with_rewrite=with_rewrite,
                batched=self.config.batched_edits, edit_loss_on_prompt=self.config.edit_loss_on_prompt,
                protection=self.protection, length_chunking=self.config.length_chunking,
            )  # fmt: skip

    def _step_loss(self, groups: Sequence[EditGroup]) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss of ``groups`` (editing.training.distributed spreads it over processes)."""
        return self.objective(groups)

    def train_step(self) -> dict[str, float]:
        """One optimizer step over ``grad_accumulation`` batches; non-finite steps are skipped."""
        self.network.train()
        self.optimizer.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        for _ in range(self.config.grad_accumulation):
            loss, metrics = self._step_loss(self._next_groups())
            (loss / self.config.grad_accumulation).backward()
            for name, value in metrics.items():
                totals[name] = totals.get(name, 0.0) + value / self.config.grad_accumulation
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.config.grad_clip))
        if math.isfinite(grad_norm) and math.isfinite(totals["loss"]):
            factor = learning_rate_factor(self.config, self.state.step, self._progress())
            set_learning_rates(self.optimizer, factor)
            totals["lr_factor"] = factor
            self.optimizer.step()
        else:
            self.state.skipped_steps += 1
            LOGGER.warning("step %d: non-finite loss or gradient, skipped", self.state.step)
        self.state.step += 1
        totals["grad_norm"] = grad_norm
        totals["step_size_mean"] = float(self.network.step_sizes.detach().mean())
        for parameter, name in zip(self.network.solver_parameters(), ("ridge", "protect"), strict=False):
            totals[f"{name}_mean"] = float(parameter.detach().exp().mean())
        return totals

    def _validation_chunks(self, groups: list[EditGroup]) -> list[list[EditGroup]]:
        """Consecutive groups a few at a time, each chunk scoring about ``batch_size`` examples."""
        chunks, chunk = [], []
        for index, group in enumerate(groups):
            chunk.append(group)
            if sum(g.scored for g in chunk) >= self.config.batch_size or index + 1 == len(groups):
                chunks.append(chunk)
                chunk = []
        return chunks

    def _metric_sums(self, chunks: list[list[EditGroup]]) -> tuple[dict[str, float], int]:
        """Per metric, the sum over chunks of its mean times the chunk's scored examples; their count."""
        totals: dict[str, float] = {}
        scored = 0
        for chunk in chunks:
            with torch.no_grad():
                _, metrics = self.objective(chunk, with_rewrite=True)
            weight = sum(g.scored for g in chunk)
            for name, value in metrics.items():
                totals[name] = totals.get(name, 0.0) + value * weight
            scored += weight
        return totals, scored

    def _validate_groups(self, groups: list[EditGroup]) -> dict[str, float]:
        """Means over scored examples of the objective's metrics, groups evaluated a few at a time."""
        self.network.eval()
        totals, scored = self._metric_sums(self._validation_chunks(groups))
        return {name: value / scored for name, value in totals.items()}

    def validate(self) -> dict[str, float]:
        """Edit, rephrase and locality success and the loss on the held-out examples, edited one at a time
        and (``val_group_size`` > 1, under ``group/``) in same-relation groups; ``score`` is the mean of
        the two success scores (or the single-edit one alone)."""
        metrics = self._validate_groups(consecutive_groups(self.val_examples, 1))
        metrics["single_score"] = success_score(metrics)
        metrics["score"] = metrics["single_score"]
        if self.config.val_group_size > 1:
            grouped = self._validate_groups(relation_groups(self.val_examples, self.config.val_group_size))
            metrics.update({f"group/{name}": value for name, value in grouped.items()})
            metrics["group_score"] = success_score(metrics, "group/")
            metrics["score"] = (metrics["single_score"] + metrics["group_score"]) / 2
        return metrics

    def _after_validation(self, metrics: dict[str, float]) -> bool:
        """Record a validation; returns True when early stopping should end training."""
        self.state.validations.append({"step": self.state.step, **metrics})
        self.on_metrics(self.state.step, {f"val/{name}": value for name, value in metrics.items()})
        value = selection_value(metrics, self.config.select_by)
        if value > self.state.best_val:
            self.state.best_val, self.state.best_step = value, self.state.step
            self.state.validations_without_improvement = 0
            self.best_network = copy.deepcopy(self.network.state_dict())
            return False
        self.state.validations_without_improvement += 1
        patience = self.config.early_stop_patience
        return patience > 0 and self.state.validations_without_improvement >= patience

    def fit(self, on_checkpoint: Callable[[EditorTrainer], None] | None = None) -> TrainerState:
        """Train until the step budget, the time budget or early stopping; keeps the best network."""
        if not self.state.validations:
            self._after_validation(self.validate())  # the untrained editor is the baseline to beat
        budget = self.config.max_minutes * 60 if self.config.max_minutes else math.inf
        started = time.monotonic() - self.state.elapsed_seconds
        while not self.state.stop_reason:
            metrics = self.train_step()
            self.state.elapsed_seconds = time.monotonic() - started
            if self.state.step % self.config.log_every == 0:
                self.on_metrics(self.state.step, {f"train/{name}": value for name, value in metrics.items()})
            self.on_progress(self.state.step, self.config.max_steps)
            if self.state.step % self.config.val_every == 0 and self._after_validation(self.validate()):
                self.state.stop_reason = "early_stopping"
            elif self.state.step >= self.config.max_steps:
                self.state.stop_reason = "max_steps"
            elif self._out_of_time(time.monotonic() - started, budget):
                self.state.stop_reason = "max_minutes"
            if on_checkpoint is not None and (
                self.state.stop_reason or self.state.step % self.config.val_every == 0
            ):
                on_checkpoint(self)
        last_validated = self.state.validations[-1]["step"]
        if self.state.stop_reason != "early_stopping" and last_validated != self.state.step:
            self._after_validation(self.validate())  # the steps since the last validation count too
        if self.best_network is not None:
            self.network.load_state_dict(self.best_network)
        LOGGER.info("stopped after %d steps (%s)", self.state.step, self.state.stop_reason)
        return self.state

    def _out_of_time(self, elapsed: float, budget: float) -> bool:
        return elapsed >= budget

    def _progress(self) -> float:
        """How much of the budget is used (the learning-rate schedule's clock)."""
        return training_progress(self.config, self.state.step, self.state.elapsed_seconds)

    def summary(self) -> dict[str, Any]:
        summary = asdict(self.state)
        summary["steps_per_second"] = self.state.step / max(self.state.elapsed_seconds, 1e-9)
        summary["prefix_cache"] = {
            "entries": len(self.cache),
            "hits": self.cache.hits,
            "misses": self.cache.misses,
        }
        return summary


def _protection(network: MendNetwork, protected: ProtectedKeys | None, device: torch.device):
    """Per weight, (protected basis, mean eigenvalue) for least-squares training; None for the sum."""
    if network.config.aggregation != "least_squares":
        return None
    if protected is None:
        raise ValueError("training a least-squares editor needs the base model's protected keys")
    return {
        name: (basis.to(device), protected.mean_eigenvalue(name))
        for name, basis in protected.bases().items()
        if name in network.layers
    }
