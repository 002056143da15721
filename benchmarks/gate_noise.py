"""How much of the gate's neighbour locality any night of edits costs: placebo nights on a fix run's probes.

A fix run's gate scores its edits' locality probes (hard neighbours of each edit and random pool
prompts). Many of the answers there are continuations the champion guesses at a near tie, which any
update may tip. ``python -m benchmarks.gate_noise --tag demo`` (after ``make run``; the same ``MEND_HOME``)
takes the last fix run's edit records and asks what an *unrelated* night does to them: the fix run's
editor, with the fix run's edit-time settings, applies ``--edits`` CounterFact *train* records that no
editor trained on and nothing scores (from ``--first-record`` on; any naming a subject the run's prompts
mention is skipped), and the run's own records are scored against that placebo candidate exactly as the
gate scores them: the neighbour column, what changed answers took off it (``tasks.evaluate.locality_costs``)
and how much of that were near ties. Writes ``benchmarks/results/gate-noise-<tag>.json``, ``.md`` and
``.png``; ``--from-json`` writes the Markdown and plot of an earlier result again.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import random
import time
from pathlib import Path

from benchmarks.editors import TRAIN_FILE
from benchmarks.run import add_common_arguments, configure_logging

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
LOGGER = logging.getLogger("benchmarks.gate_noise")


def last_fix_run(settings) -> tuple[str, str]:
    """(store run id, MLflow run id) of the newest fix run tracked in ``settings``' MLflow."""
    import mlflow

    from tasks.tracking import DEFAULT_EXPERIMENT, configure_tracking

    configure_tracking(settings.tracking_uri)  # None: the local SQLite of MEND_HOME, as the demo's
    experiment = mlflow.get_experiment_by_name(DEFAULT_EXPERIMENT)
    runs = [] if experiment is None else mlflow.MlflowClient().search_runs(
        [experiment.experiment_id], "attributes.run_name LIKE 'fix-%'", order_by=["attributes.start_time DESC"],
    )  # fmt: skip
    for run in runs:
        run_id = run.data.tags.get("mend.run_id")
        if run_id and settings.open_store().exists(f"runs/{run_id}/evaluation/summary.json"):
            return run_id, run.info.run_id
    raise SystemExit("no evaluated fix run in this MEND_HOME: run `make run` first")


def placebo_records(data_dir: Path, first: int, count: int, mentioned: frozenset[str], seed: int):
    """``count`` CounterFact train records from ``first`` on, drawn with ``seed``, none whose subject the
    fix run's prompts mention."""
    from editing.data.records import read_records
    from editing.mend.substitutes import subject_name

    records = read_records(data_dir / TRAIN_FILE).records[first:]
    usable = [r for r in records if r.subject and subject_name(r.subject) not in mentioned]
    return random.Random(seed).sample(usable, count)


def score_placebo(base, placebo_model, records) -> dict:
    """The gate's neighbour column for ``records`` on ``placebo_model``, and what took it down."""
    from editing.evaluation.evaluate import evaluate_edit
    from tasks.evaluate import (
        NEIGHBOUR_COLUMN,
        gate_rows,
        locality_costs,
        locality_regressions,
        neighbour_cost_summary,
    )

    evaluation = evaluate_edit(base.model, placebo_model, base.tokenizer, records)
    observed = [
        row[NEIGHBOUR_COLUMN] for row in gate_rows(evaluation.rows) if row[NEIGHBOUR_COLUMN] is not None
    ]
    costs = locality_costs(records, evaluation.probe_changes)
    regressions = locality_regressions(base.model, placebo_model, base.tokenizer, records, costs)
    return {"neighbour_locality": sum(observed) / len(observed), "changed_answers": len(regressions),
            "near_tie_answers": sum(row["near_tie"] == "yes" for row in regressions),
            "lost": neighbour_cost_summary(regressions, costs)}  # fmt: skip


def run(args: argparse.Namespace) -> dict:
    from editing.data.records import read_records
    from editing.mend.substitutes import mentioned_names
    from tasks.apply import fix_run_editor
    from tasks.editor import editor_checkpoint, find_editor_uri
    from tasks.models import load_version, scratch_dir
    from tasks.settings import FixSettings

    settings = FixSettings.from_env()
    run_id, mlflow_run_id = last_fix_run(settings)
    store = settings.open_store()
    dataset = scratch_dir(f"gate-noise-{run_id}") / "edit_dataset.jsonl"
    store.download(f"runs/{run_id}/edit_dataset.jsonl", dataset)
    records = read_records(dataset, "jsonl").records
    summary = store.read_json(f"runs/{run_id}/evaluation/summary.json")
    base = load_version(settings, "1").loaded  # the registered base model, the demo's first champion
    editor_uri = find_editor_uri(settings, base.fingerprint)
    editor = fix_run_editor(settings, base, editor_checkpoint(settings, editor_uri))
    prompts = [p for r in records for p in (r.prompt, *r.rephrase_prompts, *(q.prompt for q in r.locality))]
    mentioned = mentioned_names(prompts)
    nights = []
    for seed in range(args.nights):
        started = time.perf_counter()
        placebo = placebo_records(args.data_dir, args.first_record, args.edits, mentioned, seed)
        model = copy.deepcopy(base.model)
        editor.edit(model, base.tokenizer, placebo).apply(model)
        scored = score_placebo(base, model, records)
        nights.append({"seed": seed, "edits": [r.prompt + " " + r.target_new for r in placebo], **scored,
                       "seconds": round(time.perf_counter() - started, 1)})  # fmt: skip
        LOGGER.info("placebo night %d: neighbour locality %.3f, lost %s", seed, scored["neighbour_locality"],
                    scored["lost"])  # fmt: skip
    own = summary.get("neighbour_locality_cost")
    return {"fix_run": run_id, "mlflow_run": mlflow_run_id, "editor": editor_uri, "records": len(records),
            "own_night": {"neighbour_locality": summary["aggregates"].get("locality_neighbour"), "lost": own},
            "arguments": {k: str(v) for k, v in vars(args).items()}, "nights": nights}  # fmt: skip


def markdown(result: dict) -> str:
    own = result["own_night"]
    lines = [
        f"# Placebo nights on fix run `{result['fix_run']}` ({result['records']} edits)",
        "",
        f"Editor `{result['editor']}`, the fix run's edit-time settings. Each placebo night edits "
        f"{result['arguments']['edits']} CounterFact train records (from record {result['arguments']['first_record']} "
        "on, none naming a subject the run's prompts mention) and scores the run's own records as the gate does.",
        "",
        "| night | edits | neighbour locality | changed answers (near ties) | lost: near ties / others |",
        "|---|---|---|---|---|",
    ]
    if own.get("lost"):
        lines.append(f"| the run's own edits | {result['records']} | {own['neighbour_locality']:.3f} | - | "
                     f"{own['lost']['near_ties']:.3f} / {own['lost']['other']:.3f} |")  # fmt: skip
    for night in result["nights"]:
        lost = night["lost"]
        lines.append(f"| placebo {night['seed']} | {len(night['edits'])} | {night['neighbour_locality']:.3f} | "
                     f"{night['changed_answers']} ({night['near_tie_answers']}) | "
                     f"{lost['near_ties']:.3f} / {lost['other']:.3f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    """Per night, the neighbour column as observed, its loss split into near ties and the rest, and the
    gate's line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    own = result["own_night"]
    nights = ([("own edits", own["neighbour_locality"], own["lost"])] if own.get("lost") else []) + [
        (f"placebo {night['seed']}", night["neighbour_locality"], night["lost"]) for night in result["nights"]
    ]
    names = [name for name, _, _ in nights]
    observed = [value for _, value, _ in nights]
    near = [lost["near_ties"] for _, _, lost in nights]
    other = [lost["other"] for _, _, lost in nights]
    figure, axis = plt.subplots(figsize=(6, 3.2))
    axis.bar(names, observed, color="tab:green", label="neighbour locality")
    axis.bar(names, near, bottom=observed, color="tab:orange", label="lost: near ties")
    axis.bar(names, other, bottom=[o + n for o, n in zip(observed, near, strict=True)], color="tab:red",
             label="lost: the others")  # fmt: skip
    axis.axhline(0.95, color="black", linestyle="--", linewidth=1, label="gate (0.95)")
    axis.set_ylim(0.8, 1.0), axis.legend(fontsize=7, loc="lower right")
    axis.set_title(f"fix run {result['fix_run'][:8]}: its own night and unrelated ones", fontsize=9)
    figure.tight_layout(), figure.savefig(path, dpi=110), plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_arguments(parser)
    parser.add_argument("--tag", default="demo")
    parser.add_argument("--nights", type=int, default=3, help="placebo nights, one seed each")
    parser.add_argument(
        "--edits", type=int, default=20, help="edits per placebo night (the demo's night: 20)"
    )
    parser.add_argument(
        "--first-record", type=int, default=5_000, help="past every editor's training records"
    )
    parser.add_argument("--from-json", type=Path, help="write the Markdown and plot of a result file again")
    args = parser.parse_args(argv)
    configure_logging()
    result = json.loads(args.from_json.read_text()) if args.from_json else run(args)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / f"gate-noise-{args.tag}.json").write_text(json.dumps(result, indent=2, default=float))
    (out / f"gate-noise-{args.tag}.md").write_text(markdown(result))
    plot(result, out / f"gate-noise-{args.tag}.png")
    print(markdown(result))


if __name__ == "__main__":
    main()
