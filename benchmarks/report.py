"""Markdown tables and PNG plots for benchmark results."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


METRICS = ("rewrite_acc", "rephrase_acc", "locality_unchanged")


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def write_quality(quality: dict[str, Any], out: Path, suffix: str) -> None:
    editors = quality["editors"]
    lines = [
        f"# Editing quality ({quality['device']}, {quality['eval_records']} CounterFact val single edits)",
        "",
        "| editor | rewrite | rephrase | locality | mean of the three | eval seconds |",
        "|---|---|---|---|---|---|",
    ]
    for name, result in editors.items():
        values = [result["aggregates"].get(metric) for metric in METRICS]
        mean = sum(values) / 3 if None not in values else None
        lines.append(
            f"| {name} | "
            + " | ".join(_number(v) for v in values)
            + f" | {_number(mean)} | {result['seconds']:.0f} |"
        )
    training = quality.get("training", {})
    if "step" in training:
        lines += ["", f"Editor training: {training['step']} steps in {training['elapsed_seconds'] / 60:.1f} min "
                  f"({training['stop_reason']}), {training.get('train_records')} records."]  # fmt: skip
    (out / f"quality{suffix}.md").write_text("\n".join(lines) + "\n")

    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / max(len(editors), 1)
    for index, (name, result) in enumerate(editors.items()):
        values = [result["aggregates"].get(metric) or 0.0 for metric in METRICS]
        axis.bar([m + index * width for m in range(len(METRICS))], values, width, label=name)
    axis.set_xticks([m + width * (len(editors) - 1) / 2 for m in range(len(METRICS))], METRICS)
    axis.set_ylim(0, 1.05)
    axis.legend(fontsize=8)
    axis.set_title("Single edits on CounterFact val")
    figure.tight_layout()
    figure.savefig(out / f"quality{suffix}.png", dpi=120)
    plt.close(figure)


def write_speed(speed: dict[str, Any], out: Path, suffix: str) -> None:
    latency, step = speed["edit_latency"], speed["training_step"]
    lines = [
        f"# Speed ({speed['device']})",
        "",
        "| measurement | seconds |",
        "|---|---|",
        f"| MEND edit (capture + editor + merge) | {latency['mend_edit']:.4f} |",
        f"| plain forward+backward, all parameters (the floor) | {latency['forward_backward_all']:.4f} |",
        f"| forward+backward reaching only the edited weights | {latency['forward_backward_edited']:.4f} |",
        f"| training step, prefix cache (batch {step['batch_size']}) | {step['step_seconds_with_cache']:.4f} |",
        f"| training step, no cache (same batch) | {step['step_seconds_without_cache']:.4f} |",
        "",
        f"MEND edit / floor: {latency['ratio_vs_forward_backward_all']:.2f}x "
        f"(vs edited-weights-only backward: {latency['ratio_vs_forward_backward_edited']:.2f}x). "
        f"Prefix cache speedup: {step['speedup']:.2f}x.",
    ]
    (out / f"speed{suffix}.md").write_text("\n".join(lines) + "\n")
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 3))
    labels = ["MEND edit", "fwd+bwd (all)", "fwd+bwd (edited)", "step (cache)", "step (no cache)"]
    values = [latency["mend_edit"], latency["forward_backward_all"], latency["forward_backward_edited"],
              step["step_seconds_with_cache"], step["step_seconds_without_cache"]]  # fmt: skip
    axis.barh(labels, values)
    axis.set_xlabel("seconds (median)")
    figure.tight_layout()
    figure.savefig(out / f"speed{suffix}.png", dpi=120)
    plt.close(figure)


SCALE_METRICS = ("rewrite", "rephrase", "locality", "ppl_change")


def _cell(row: dict[str, Any], metric: str) -> str:
    if row.get(metric) is None:
        return "-"
    if metric == "ppl_change":
        return f"{100 * row[metric]:+.1f}%"
    low, high = row.get(f"{metric}_ci95", [None, None])
    return f"{row[metric]:.3f} [{low:.2f}, {high:.2f}]" if low is not None else f"{row[metric]:.3f}"


def write_scale(result: dict[str, Any], out: Path, tag: str) -> None:
    """``scale-<tag>.md`` (one table per data set) and ``scale-<tag>-<metric>.png`` per metric."""
    rows = result["rows"]
    lines = [f"# Many edits at once and night after night ({result['device']})", "",
             "Means over the edits of each cell with 95% intervals; locality is the share of neighbourhood "
             "answer tokens left unchanged; perplexity change on ME-PPL_1k texts.", ""]  # fmt: skip
    for data_set in dict.fromkeys(row.get("data", "") for row in rows):
        lines += [f"## {data_set}", "", "| editor | aggregation | mode | edits | rewrite | rephrase | locality | "
                  "perplexity | seconds | scored | subset |", "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for row in (r for r in rows if r.get("data", "") == data_set):
            lines.append(
                f"| {row['editor']} | {row['aggregation']} | {row['mode']} | {row['edits']} | "
                + " | ".join(_cell(row, metric) for metric in SCALE_METRICS)
                + f" | {row['seconds']:.1f} | {row.get('records_scored', '')} | {row.get('subset', '')} |"
            )
        lines.append("")
    (out / f"scale-{tag}.md").write_text("\n".join(lines) + "\n")
    plt = _pyplot()
    for metric in SCALE_METRICS:
        figure, axis = plt.subplots(figsize=(6.5, 3.8))
        series = dict.fromkeys((r["editor"], r["mode"]) for r in rows if r.get("data") == "counterfact")
        for editor, mode in series:
            points = sorted((r["edits"], r[metric]) for r in rows if (r["editor"], r["mode"], r.get("data")) ==
                            (editor, mode, "counterfact") and r.get(metric) is not None)  # fmt: skip
            if points:
                axis.plot(
                    *zip(*points, strict=True), "o-" if mode == "batch" else "s--", label=f"{editor} ({mode})"
                )
        axis.set_xscale("log")
        axis.set_xlabel("edits")
        axis.set_ylabel(metric.replace("_", " "))
        axis.set_title(f"CounterFact val: {metric.replace('_', ' ')} against the number of edits")
        axis.legend(fontsize=7)
        figure.tight_layout()
        figure.savefig(out / f"scale-{tag}-{metric}.png", dpi=110)
        plt.close(figure)
