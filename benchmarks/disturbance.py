"""Calibrate the disturbance cap: how far an editor's updates move the protected keys' outputs, by batch size.

``python -m benchmarks.disturbance --tag cpu`` edits batches of CounterFact *train* records that the
editor never trained on (from ``--first-record`` on; neither the gate nor any benchmark scores CounterFact
train) and records, per batch, each weight's *disturbance*: ``E_p ||S k_p||^2 / E_p ||W k_p||^2``, the
update's energy on the protected keys as a share of the weight's own (``MendEditor.with_disturbance_cap``),
with the perplexity change on general texts that nothing else uses. The suggested cap is the
``--quantile`` of the largest per-weight disturbance over batches of the editor's largest training group:
an update may move general behaviour as far as the editor was trained to, and no further. (Over every
batch up to that size the many single edits would decide the quantile, and cap a night of 16.)
Writes ``benchmarks/results/disturbance-<tag>.json``, ``.md`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import time
from pathlib import Path

from benchmarks.editors import RECIPES, TRAIN_FILE, train_or_reuse
from benchmarks.run import _machine, add_common_arguments, configure_logging
from benchmarks.scale import Bench, _numbers
from editing.data.protected_sources import training_texts
from editing.data.records import read_records
from editing.evaluation.evaluate import perplexity
from editing.mend.editor import disturbances

os.environ.setdefault("HF_HUB_OFFLINE", "1")
LOGGER = logging.getLogger("benchmarks.disturbance")


def calibration_texts(data_dir: Path, count: int) -> list[str]:
    """General texts no editor trained on and no benchmark scores: ME-PPL sentences past the first 1,500
    that ``training_texts`` offers (editor training takes at most one per train record it uses)."""
    return training_texts(data_dir, 1_500 + count)[1_500:]


def measure(bench: Bench, editor, records, sizes: list[int], edits_per_size: int, ppl_batches: int):
    """One row per batch: its size, every weight's disturbance and (for the first ``ppl_batches`` of each
    size) the perplexity change."""
    loaded, rows = bench.loaded, []
    for size in sizes:
        count = max(1, edits_per_size // size)
        for index in range(count):
            batch = records[index * size : (index + 1) * size]
            if len(batch) < size:
                break
            result = editor.edit(loaded.model, loaded.tokenizer, batch)
            by_weight = disturbances(result.diagnostics)
            row = {
                "size": size,
                "batch": index,
                "disturbance": max(by_weight.values()),
                "by_weight": by_weight,
            }
            if index < ppl_batches:
                with result.applied(loaded.model):
                    after = perplexity(loaded.model, loaded.tokenizer, bench.texts)
                    row["ppl_change"] = after / bench.perplexity_before - 1
            rows.append(row)
        LOGGER.info("size %d: disturbance median %.3g over %d batches", size,
                    statistics.median(r["disturbance"] for r in rows if r["size"] == size), count)  # fmt: skip
    return rows


def quantile(values: list[float], share: float) -> float:
    """The ``share`` quantile by linear interpolation between order statistics."""
    ordered = sorted(values)
    position = share * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary_by_size(rows: list[dict]) -> list[dict]:
    sizes = sorted({r["size"] for r in rows})
    table = []
    for size in sizes:
        values = [r["disturbance"] for r in rows if r["size"] == size]
        ppl = [r["ppl_change"] for r in rows if r["size"] == size and "ppl_change" in r]
        table.append({"size": size, "batches": len(values), "median": statistics.median(values),
                      "p95": quantile(values, 0.95), "max": max(values),
                      "ppl_change": sum(ppl) / len(ppl) if ppl else None})  # fmt: skip
    return table


def write_report(result: dict, out: Path, tag: str) -> None:
    lines = [
        f"# Disturbance by batch size ({tag})", "",
        f"Editor `{result['editor']}`; CounterFact train records from {result['arguments']['first_record']} "
        "(never trained on, never scored). Disturbance: the largest per-weight share "
        "`E||S k||^2 / E||W k||^2` over protected keys; perplexity on general texts nothing else uses.", "",
        "| batch size | batches | median | 95th percentile | max | perplexity change |", "|---|---|---|---|---|---|",
    ]  # fmt: skip
    for row in result["by_size"]:
        ppl = "-" if row["ppl_change"] is None else f"{100 * row['ppl_change']:+.1f}%"
        lines.append(f"| {row['size']} | {row['batches']} | {row['median']:.3g} | {row['p95']:.3g} | "
                     f"{row['max']:.3g} | {ppl} |")  # fmt: skip
    lines += ["", f"Suggested cap: **{result['suggested_cap']:.3g}**, the {result['quantile']:.0%} quantile over "
              f"batches of {result['trained_up_to']} edits (the editor's largest training group)."]  # fmt: skip
    (out / f"disturbance-{tag}.md").write_text("\n".join(lines) + "\n")
    from benchmarks.report import _pyplot

    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.scatter([r["size"] for r in result["rows"]], [r["disturbance"] for r in result["rows"]], s=8)
    axis.axhline(result["suggested_cap"], linestyle="--", color="grey", label="suggested cap")
    axis.set(xscale="log", yscale="log", xlabel="edits in the batch", ylabel="disturbance (largest weight)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(out / f"disturbance-{tag}.png", dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tag", default="cpu")
    add_common_arguments(parser)
    parser.add_argument("--editor", default="mend-ls-fix-run", choices=sorted(RECIPES))
    parser.add_argument("--train-minutes", type=float, default=10.0)
    parser.add_argument("--sizes", type=_numbers, default=_numbers("1,4,16,32,64,128,256,1024"))
    parser.add_argument("--edits-per-size", type=int, default=256, help="edits per size (at least one batch)")
    parser.add_argument(
        "--first-record", type=int, default=5_000, help="past every recipe's training records"
    )
    parser.add_argument("--ppl-batches", type=int, default=1)
    parser.add_argument("--ppl-texts", type=int, default=100)
    parser.add_argument("--quantile", type=float, default=0.95)
    args = parser.parse_args(argv)
    configure_logging()
    from editing.core.models import load_model
    from editing.editors import build_editor

    recipe = RECIPES[args.editor]
    if recipe.aggregation != "least_squares" or args.first_record < recipe.train_records:
        parser.error(
            f"{args.editor}: needs a least-squares editor and records past its {recipe.train_records}"
        )
    loaded = load_model("default", device=args.device)
    training = train_or_reuse(loaded, args.data_dir, args.work, recipe, args.train_minutes, args.device)
    editor = build_editor("mend", loaded, editor_path=args.work / args.editor)
    editor = editor.with_disturbance_cap(math.inf, loaded.model)  # measure, bound nothing
    needed = args.first_record + max(args.edits_per_size, max(args.sizes))
    records = read_records(args.data_dir / TRAIN_FILE, limit=needed).records[args.first_record :]
    bench = Bench.measure(loaded, calibration_texts(args.data_dir, args.ppl_texts))
    started = time.perf_counter()
    rows = measure(bench, editor, records, args.sizes, args.edits_per_size, args.ppl_batches)
    trained_up_to = max(recipe.group_sizes)
    in_training = [r["disturbance"] for r in rows if r["size"] == trained_up_to]
    if not in_training:
        parser.error(f"--sizes must include {trained_up_to}, {args.editor}'s largest training group")
    result = {"machine": _machine(args.device), "editor": args.editor, "fingerprint": loaded.fingerprint,
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "arguments": {k: str(v) for k, v in vars(args).items()},
              "training": training, "seconds": time.perf_counter() - started, "quantile": args.quantile,
              "trained_up_to": trained_up_to, "suggested_cap": quantile(in_training, args.quantile),
              "by_size": summary_by_size(rows), "rows": rows}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"disturbance-{args.tag}.json").write_text(json.dumps(result, indent=2))
    write_report(result, args.out, args.tag)
    LOGGER.info(
        "suggested cap %.3g; wrote %s", result["suggested_cap"], args.out / f"disturbance-{args.tag}.md"
    )


if __name__ == "__main__":
    main()
