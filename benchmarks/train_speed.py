"""Training throughput of the fix run's editor recipe: seconds per step, where a step's time goes, and
how many steps a time budget buys.

The fix run trains its editor for a fixed number of minutes (``MEND_EDITOR_TRAIN_MINUTES``), so on a
slow CPU the editor's quality is decided by steps per second. This benchmark builds the trainer exactly
as the pipeline does (``benchmarks.editors`` recipe ``mend-ls``: least squares, groups of 1 to 32, general
text every 4th step), then times the same sequence of training steps the real run takes (seed 0, steps
0..N-1) and, with ``--profile``, the operators that take the time.

The steps start from an empty frozen-prefix cache, as a training run does, so their time includes
computing the prefixes of the sequences they meet (the part of a short run that batching by length
cuts most). ``--compare-chunking`` then times the post-edit pass with and without length chunking on
the same steps, alternated, so that both see the same machine.

    python -m benchmarks.train_speed --steps 100 --compare-chunking 32 --profile
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

from benchmarks.editors import RECIPES, TRAIN_FILE, protected_for
from benchmarks.run import add_common_arguments, configure_logging
from benchmarks.train_speed_report import write_report
from editing.core.forward import fast_bf16
from editing.core.models import load_model
from editing.core.targets import resolve_scope
from editing.data.protected_sources import training_texts
from editing.data.records import read_records
from editing.mend.editor_net import MendNetwork
from editing.training.run import _encode, split_records
from editing.training.trainer import EditorTrainer

LOGGER = logging.getLogger(__name__)


def build_trainer(
    loaded, data_dir: Path, work: Path, device: str, records: int | None = None
) -> EditorTrainer:
    """The trainer the fix run builds (tasks/editor.py), with the benchmark recipe's settings (and fewer
    training records when ``records`` says so, for a quick profile). Its prefix cache starts empty."""
    recipe = RECIPES["mend-ls"]
    records = read_records(data_dir / TRAIN_FILE, limit=records or recipe.train_records).records
    train, held_out = split_records(records, recipe.val_records, seed=0)
    train_config, editor_config = recipe.configs(minutes=10.0, device=device)
    protected = protected_for(loaded, data_dir, work)
    scope = resolve_scope(loaded.model)
    torch.manual_seed(train_config.seed)
    network = MendNetwork(scope.layers, editor_config)
    texts = training_texts(data_dir, len(records))
    examples = _encode(loaded.tokenizer, train, held_out, train_config, texts)
    return EditorTrainer(
        loaded.model, loaded.tokenizer, scope, network, *examples, train_config, protected=protected
    )


def time_steps(trainer: EditorTrainer, steps: int) -> list[dict]:
    """Seconds of each of ``steps`` training steps, with the step's largest group size."""
    rows = []
    for _ in range(steps):
        groups = trainer.sampler.groups(trainer.state.step)
        with_general = trainer.state.step % trainer.config.general_text_every == 0
        started = time.perf_counter()
        trainer.train_step()
        rows.append({
            "seconds": time.perf_counter() - started,
            "group_size": max(len(group.examples) for group in groups),
            "general_text": with_general,
        })  # fmt: skip
    return rows


def paired_chunking(trainer: EditorTrainer, steps: int) -> dict:
    """Objective and backward of the same steps' batches with and without length chunking, alternated
    step by step so that both see the same machine: median seconds of each and their ratio."""
    seconds: dict[bool, list[float]] = {True: [], False: []}
    config = trainer.config
    for step in range(steps):
        groups = trainer._groups_of(step)  # steps already run: their prefixes are in the cache
        for chunking in (True, False) if step % 2 else (False, True):
            trainer.config = config.replace(length_chunking=chunking)
            trainer.optimizer.zero_grad(set_to_none=True)
            started = time.perf_counter()
            loss, _ = trainer.objective(groups)
            loss.backward()
            seconds[chunking].append(time.perf_counter() - started)
    trainer.config = config
    chunked, padded = statistics.median(seconds[True]), statistics.median(seconds[False])
    return {"steps": steps, "median_seconds_chunked": chunked, "median_seconds_padded": padded,
            "speedup": padded / chunked}  # fmt: skip


def profile_steps(trainer: EditorTrainer, steps: int, top: int) -> str:
    """The operators that took the most CPU time over ``steps`` more training steps."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as profiler:
        for _ in range(steps):
            trainer.train_step()
    by_operator = profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)
    by_shape = profiler.key_averages(group_by_input_shape=True)
    shares = _time_shares(by_shape)
    table = by_shape.table(sort_by="self_cpu_time_total", row_limit=top)
    return shares, f"{by_operator}\n\nBy input shapes:\n{table}"


def _time_shares(events) -> dict[str, float]:
    """Seconds of self CPU time in matrix products with the vocabulary (any operand dimension equal to
    the vocabulary size), in other matrix products, and in everything else."""
    vocabulary = 49_152
    shares = {"vocabulary_products": 0.0, "other_products": 0.0, "everything_else": 0.0}
    for event in events:
        seconds = event.self_cpu_time_total / 1e6
        if event.key in ("aten::mm", "aten::bmm", "aten::addmm"):
            touches = any(vocabulary in shape for shape in event.input_shapes if shape)
            shares["vocabulary_products" if touches else "other_products"] += seconds
        else:
            shares["everything_else"] += seconds
    return shares


def summarise(rows: list[dict]) -> dict:
    seconds = [row["seconds"] for row in rows]
    by_size: dict[int, list[float]] = {}
    for row in rows:
        by_size.setdefault(row["group_size"], []).append(row["seconds"])
    general = [row["seconds"] for row in rows if row["general_text"]]
    plain = [row["seconds"] for row in rows if not row["general_text"]]
    return {
        "steps": len(rows),
        "steps_per_second": len(rows) / sum(seconds),
        "mean_step_seconds": statistics.fmean(seconds),
        "median_by_group_size": {size: statistics.median(v) for size, v in sorted(by_size.items())},
        "median_with_general_text": statistics.median(general) if general else None,
        "median_without_general_text": statistics.median(plain) if plain else None,
    }


def _commit() -> str | None:
    """The checkout's commit, so that a before/after pair says what it compared."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--profile", action="store_true", help="also profile 8 more steps' operators")
    parser.add_argument("--tag", default="cpu")
    add_common_arguments(parser)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--records", type=int, default=None, help="fewer training records (quick profile)")
    parser.add_argument(
        "--compare-chunking",
        type=int,
        default=0,
        metavar="STEPS",
        help="also time STEPS steps' objective with and without length chunking, alternated",
    )
    parser.add_argument(
        "--baseline",
        default=None,
        metavar="TAG",
        help="a saved run (train-speed-TAG.json) to show beside this one in the report",
    )
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from the saved JSON")  # fmt: skip
    arguments = parser.parse_args()
    path = arguments.out / f"train-speed-{arguments.tag}.json"
    if not arguments.report_only:
        measure(arguments, path)
    baseline = (
        [json.loads((arguments.out / f"train-speed-{arguments.baseline}.json").read_text())]
        if arguments.baseline
        else []
    )
    write_report([*baseline, json.loads(path.read_text())], arguments.out, arguments.tag)


def measure(arguments: argparse.Namespace, path: Path) -> None:
    """Time the steps (and profile them, when asked) and save the result to ``path``."""
    configure_logging()
    if arguments.threads:
        torch.set_num_threads(arguments.threads)
    loaded = load_model("default", device=arguments.device)
    trainer = build_trainer(loaded, arguments.data_dir, arguments.work, arguments.device, arguments.records)
    rows = time_steps(trainer, arguments.steps)
    LOGGER.info("%d steps in %.0f s", len(rows), sum(row["seconds"] for row in rows))
    result = {
        "tag": arguments.tag,
        "commit": _commit(),
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "fast_bf16": fast_bf16(torch.device("cpu")),
        },
        "prefix_cache_entries": len(trainer.cache),
        **summarise(rows),
        "total_seconds": sum(row["seconds"] for row in rows),
        "rows": rows,
    }
    if arguments.compare_chunking:
        result["length_chunking"] = paired_chunking(trainer, arguments.compare_chunking)
    arguments.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))
    if arguments.profile:
        shares, table = profile_steps(trainer, 8, top=25)
        (arguments.out / f"train-speed-{arguments.tag}-profile.txt").write_text(table)
        result["profile_seconds_over_8_steps"] = shares
        path.write_text(json.dumps(result, indent=1))
        print(table)
        print(json.dumps(shares, indent=1))


if __name__ == "__main__":
    main()
