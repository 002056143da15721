"""Editor training over several processes: torchrun + DistributedDataParallel (gloo on CPU, NCCL on GPU).

    torchrun --nproc-per-node 2 -m editing.training.distributed --model DIR --records FILE --out DIR

A step's global batch is ``TrainConfig.batch_shards`` sampler draws; each process computes its share of
them (draw ``k`` on process ``k mod N``) and DDP averages the gradients. Three things make the result
equal to one process computing the whole global batch (tested, within float tolerance):

- each process scales its loss, a mean over its own scored examples, by its share of the global
  batch's scored examples, so DDP's average of gradients is the gradient of the global mean;
- the normalisers fold in the statistics of the whole global batch (``synchronized_statistics``),
  not each process's own rows;
- validation chunks are spread over the processes and their sums combined, and the time budget is
  the first process's clock, so every process takes the same decisions and stops at the same step.

Only the first process writes checkpoints.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from editing.config import EditorConfig, TrainConfig
from editing.mend.editor_net import RunningNormalizer
from editing.training.objective import EditGroup
from editing.training.trainer import EditorTrainer

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcessGroup:
    rank: int
    world_size: int
    backend: str


@contextlib.contextmanager
def process_group(device: str = "auto") -> Iterator[ProcessGroup]:
    """Join torchrun's process group (RANK, WORLD_SIZE, MASTER_ADDR/PORT from the environment): NCCL with
    one GPU per process when training on CUDA (``TrainConfig.device``), gloo otherwise. Always leaves
    the group."""
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    backend = "nccl" if use_cuda else "gloo"
    dist.init_process_group(backend)
    try:
        yield ProcessGroup(dist.get_rank(), dist.get_world_size(), backend)
    finally:
        dist.destroy_process_group()


def _merge_batch(
    count: float, mean: torch.Tensor, squares: torch.Tensor
) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Chan's parallel merge over every process: the global (count, mean, sum of squared deviations)."""
    sums = torch.cat([mean.new_tensor([count]), mean * count])  # (1 + dim,)
    dist.all_reduce(sums)
    total = float(sums[0])
    if total == 0:
        return 0.0, torch.zeros_like(mean), torch.zeros_like(squares)
    global_mean = sums[1:] / total
    spread = squares + count * (mean - global_mean) ** 2  # deviations about the global mean
    dist.all_reduce(spread)
    return total, global_mean, spread


@contextlib.contextmanager
def synchronized_statistics(network: nn.Module) -> Iterator[None]:
    """While active, every normaliser of ``network`` updates with the statistics of all processes' rows."""
    normalizers = [module for module in network.modules() if isinstance(module, RunningNormalizer)]
    for normalizer in normalizers:
        normalizer.merge_batch = _merge_batch
    try:
        yield
    finally:
        for normalizer in normalizers:
            normalizer.merge_batch = None


class _Objective(nn.Module):
    """The training objective as a module, so DDP sees one forward (the loss) per step and can reduce the
    network's gradients during backward. The trainer is held as a plain attribute, not a submodule: the
    frozen base model is no part of what DDP synchronises."""

    def __init__(self, trainer: EditorTrainer):
        super().__init__()
        self.network = trainer.network
        self.trainer = trainer

    def forward(self, batch: _Groups) -> tuple[torch.Tensor, dict[str, float]]:
        return self.trainer.objective(batch.groups)


class _Groups:
    """A step's groups in a wrapper DDP passes through as it is (it would copy lists and dataclasses
    member by member when moving inputs to a GPU)."""

    def __init__(self, groups: Sequence[EditGroup]):
        self.groups = groups


class DistributedEditorTrainer(EditorTrainer):
    """``EditorTrainer`` on one of torchrun's processes (the process group must be initialised)."""

    def __init__(self, *arguments, **keywords):
        super().__init__(*arguments, **keywords)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        if self.config.batch_shards % self.world_size:
            raise ValueError(
                f"TrainConfig.batch_shards ({self.config.batch_shards}) must be a multiple of the number "
                f"of processes ({self.world_size}), so that each computes the same share of a step"
            )
        devices = [torch.cuda.current_device()] if self.device.type == "cuda" else None
        # find_unused_parameters: a step whose groups leave a weight's solver unused still reduces.
        self.parallel = DistributedDataParallel(
            _Objective(self), device_ids=devices, broadcast_buffers=False, find_unused_parameters=True
        )

    def _draws(self) -> range:
        return range(self.rank, self.config.batch_shards, self.world_size)

    def _step_loss(self, groups: Sequence[EditGroup]) -> tuple[torch.Tensor, dict[str, float]]:
        local = sum(group.scored for group in groups)
        with synchronized_statistics(self.network):
            loss, metrics = self.parallel(_Groups(groups))
        names = sorted(metrics)
        sums = torch.tensor([float(local)] + [metrics[name] * local for name in names], dtype=torch.float64)
        dist.all_reduce(sums)  # gloo reduces CPU tensors; NCCL needs them on the GPU
        total = float(sums[0])
        # DDP divides the summed gradients by the number of processes: weighting each local mean by its
        # share of the global scored examples (times that number) leaves the gradient of the global mean.
        scaled = loss * (local * self.world_size / total)
        return scaled, {name: float(value) / total for name, value in zip(names, sums[1:], strict=True)}

    def _metric_sums(self, chunks: list[list[EditGroup]]) -> tuple[dict[str, float], int]:
        mine = super()._metric_sums(chunks[self.rank :: self.world_size])
        gathered: list[tuple[dict[str, float], int]] = [({}, 0)] * self.world_size
        dist.all_gather_object(gathered, mine)
        totals: dict[str, float] = {}
        for sums, _ in gathered:
            for name, value in sums.items():
                totals[name] = totals.get(name, 0.0) + value
        return totals, sum(count for _, count in gathered)

    def _out_of_time(self, elapsed: float, budget: float) -> bool:
        decision = [super()._out_of_time(elapsed, budget)]
        dist.broadcast_object_list(decision, src=0)  # the first process's clock decides for all
        return bool(decision[0])

    def _progress(self) -> float:
        # Every replica must step at the same learning rate, or their networks drift apart.
        progress = [super()._progress()]
        dist.broadcast_object_list(progress, src=0)
        return float(progress[0])


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="base model: safetensors directory, .gguf or hub id")
    parser.add_argument("--records", required=True, type=Path, help="edit records (any read_records format)")
    parser.add_argument("--out", required=True, type=Path, help="checkpoint directory (first process)")
    parser.add_argument("--limit", type=int, default=None, help="records read")
    parser.add_argument("--val-count", type=int, default=16, help="records held out for validation")
    parser.add_argument("--train-config", type=Path, help="TrainConfig as JSON")
    parser.add_argument("--editor-config", type=Path, help="EditorConfig as JSON")
    parser.add_argument("--protected", type=Path, help="protected_keys.safetensors (least squares)")
    return parser.parse_args(argv)


def _config(path: Path | None, kind):
    import json

    return kind.from_dict(json.loads(path.read_text())) if path else kind()


def main(argv: Sequence[str] | None = None) -> None:
    from editing.core.models import load_model
    from editing.data.records import read_records
    from editing.mend.protected import ProtectedKeys
    from editing.training.run import split_records, train_editor

    arguments = _arguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s rank %(process)d %(message)s")
    train_config = _config(arguments.train_config, TrainConfig)
    editor_config = _config(arguments.editor_config, EditorConfig)
    with process_group(train_config.device) as group:
        loaded = load_model(arguments.model)
        records = read_records(arguments.records, limit=arguments.limit).records
        train, val = split_records(records, arguments.val_count, train_config.seed)
        protected = None
        if arguments.protected is not None:
            protected = ProtectedKeys.load(arguments.protected, base_fingerprint=loaded.fingerprint)
        run = train_editor(
            loaded, train, val, arguments.out, train_config=train_config, editor_config=editor_config,
            protected=protected, trainer_class=DistributedEditorTrainer, writes_checkpoints=group.rank == 0,
        )  # fmt: skip
        if group.rank == 0:
            LOGGER.info("%d processes (%s): %d steps, %s", group.world_size, group.backend,
                        run.summary["step"], run.summary["stop_reason"])  # fmt: skip


if __name__ == "__main__":
    main()
