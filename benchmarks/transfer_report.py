"""Markdown table and heat map of the transfer benchmark (``benchmarks.transfer``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.report import _pyplot

COLUMNS = ("rewrite", "rephrase", "locality_neighbour", "locality_same_subject", "portability")
# The heat map shows the three numbers an editor is for, plus same-subject locality.
HEAT_METRICS = ("rewrite", "rephrase", "locality_neighbour", "locality_same_subject")


def cell_text(row: dict[str, Any], name: str) -> str:
    """``mean [low, high]`` to two decimals, or ``-`` when the cell has no such probe."""
    mean = row.get(name)
    if mean is None:
        return "-"
    low, high = row.get(f"{name}_ci95") or (None, None)
    return f"{mean:.2f}" if low is None else f"{mean:.2f} [{low:.2f}, {high:.2f}]"


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# Transfer ({result['device']}, {result['date']})",
        "",
        "Mean over edits [95% interval]; `-`: the evaluation set has no probe of that kind.",
        "",
        "| train data | eval data | mode | edits | " + " | ".join(COLUMNS) + " | seconds |",
        "|---|---|---|---|" + "---|" * len(COLUMNS) + "---|",
    ]
    for row in result["rows"]:
        values = " | ".join(cell_text(row, name) for name in COLUMNS)
        lines.append(
            f"| {row['train_data']} | {row['eval_data']} | {row['mode']} | {row['edits']} | {values} "
            f"| {row['seconds']:.0f} |"
        )
    held = result.get("held_out_relations")
    if held:
        lines += ["", f"Held-out CounterFact relations ({len(held)}): {', '.join(held)}."]
    lines += ["", "Records per evaluation set: " + ", ".join(
        f"{name} {count}" for name, count in result.get("evaluation_records", {}).items())]  # fmt: skip
    return "\n".join(lines) + "\n"


def heat_grid(rows: list[dict[str, Any]], metric: str, mode: str):
    """(train labels, eval labels, values[train][eval] or None) for one metric and mode."""
    chosen = [row for row in rows if row["mode"] == mode]
    trains = list(dict.fromkeys(row["train_data"] for row in chosen))
    evals = list(dict.fromkeys(row["eval_data"] for row in chosen))
    values = [[None] * len(evals) for _ in trains]
    for row in chosen:
        values[trains.index(row["train_data"])][evals.index(row["eval_data"])] = row.get(metric)
    return trains, evals, values


def write_transfer(result: dict[str, Any], out: Path, tag: str) -> list[Path]:
    """``transfer-<tag>.md`` and ``transfer-<tag>.png`` (one heat map per metric, single edits)."""
    out = Path(out)
    paths = [out / f"transfer-{tag}.md"]
    paths[0].write_text(markdown(result))
    rows = result["rows"]
    mode = "single" if any(row["mode"] == "single" for row in rows) else "batch"
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(HEAT_METRICS), figsize=(4.2 * len(HEAT_METRICS), 3.6), squeeze=False)
    for axis, metric in zip(axes[0], HEAT_METRICS, strict=True):
        trains, evals, values = heat_grid(rows, metric, mode)
        grid = [[float("nan") if v is None else v for v in line] for line in values]
        axis.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        axis.set_xticks(range(len(evals)), evals, rotation=30, ha="right", fontsize=7)
        axis.set_yticks(range(len(trains)), trains, fontsize=7)
        axis.set_title(f"{metric} ({mode} edits)", fontsize=9)
        for i, line in enumerate(values):
            for j, value in enumerate(line):
                text = "-" if value is None else f"{value:.2f}"
                axis.text(j, i, text, ha="center", va="center", color="white", fontsize=8)
    figure.tight_layout()
    paths.append(out / f"transfer-{tag}.png")
    figure.savefig(paths[-1], dpi=110)
    plt.close(figure)
    return paths
