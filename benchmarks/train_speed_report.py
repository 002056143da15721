"""Markdown and a plot for ``benchmarks.train_speed``: one column per run (a baseline first, when given)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.report import _pyplot

ROWS = (  # (label, key, format)
    ("commit", "commit", "{}"),
    ("steps timed (from a cold prefix cache)", "steps", "{}"),
    ("seconds for those steps", "total_seconds", "{:.0f}"),
    ("steps per second", "steps_per_second", "{:.3f}"),
    ("median step, without general text (s)", "median_without_general_text", "{:.3f}"),
    ("median step, with general text (s)", "median_with_general_text", "{:.3f}"),
    ("prefixes computed", "prefix_cache_entries", "{}"),
)


def _cell(result: dict[str, Any], key: str, form: str) -> str:
    value = result.get(key)
    if key == "total_seconds" and value is None:  # runs saved before the field existed
        value = sum(row["seconds"] for row in result["rows"])
    return "-" if value is None else form.format(value)


def write_report(results: list[dict[str, Any]], out: Path, tag: str) -> None:
    """``train-speed-<tag>.md`` (a table, runs side by side) and ``train-speed-<tag>.png`` (cumulative
    seconds against steps, one line per run)."""
    header = "| | " + " | ".join(result["tag"] for result in results) + " |"
    lines = [f"# Editor training speed ({tag})", "", header, "|---" * (len(results) + 1) + "|"]
    for label, key, form in ROWS:
        lines.append(f"| {label} | " + " | ".join(_cell(r, key, form) for r in results) + " |")
    chunking = results[-1].get("length_chunking")
    if chunking:
        lines += ["", f"Post-edit pass by length on {chunking['steps']} steps, alternated with one padded batch: "
                  f"median {chunking['median_seconds_padded']:.3f} s padded, {chunking['median_seconds_chunked']:.3f} s "
                  f"by length ({chunking['speedup']:.2f}x)."]  # fmt: skip
    machine = results[-1]["machine"]
    lines += [
        "",
        f"Machine: {machine['processor']}, {machine['threads']} threads, fast bf16: {machine['fast_bf16']}.",
    ]
    (out / f"train-speed-{tag}.md").write_text("\n".join(lines) + "\n")

    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6, 4))
    for result in results:
        elapsed, total = [], 0.0
        for row in result["rows"]:
            total += row["seconds"]
            elapsed.append(total)
        axes.plot(range(1, len(elapsed) + 1), elapsed, label=result["tag"])
    axes.set_xlabel("training step")
    axes.set_ylabel("seconds since the first step")
    axes.set_title("Editor training from a cold prefix cache")
    axes.legend()
    figure.tight_layout()
    figure.savefig(out / f"train-speed-{tag}.png", dpi=110)
    plt.close(figure)
