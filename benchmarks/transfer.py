"""Does the editor transfer? Training mixes x evaluation sets, plus leave-relations-out on CounterFact.

``make bench-transfer`` (``python -m benchmarks.transfer --tag cpu``) writes ``benchmarks/results/
transfer-<tag>.json`` (a ``rows`` list), ``.md`` and a heat-map PNG. One MEND editor (least squares, the
fix run's recipe) is trained per training mix (``TrainConfig.training_mix``) and kept under
``benchmarks/work/transfer-<mix>/``; each is evaluated on

* ``counterfact``: CounterFact val (neighbour probes; same-subject probes added from the base model's own
  answers about the record's subject, ``editing.data.same_subject``);
* ``zsre``: zsRE in MEND's format (an unrelated NQ question as locality; portability);
* ``knowedit``: KnowEdit ZsRE (same-subject probes, its Relation_Specificity; portability).

Leave-relations-out: a fifth of CounterFact's relations (``editing.data.relations``, by relation id over
train and val together, chosen with a seed) is held out of training, and the editor is evaluated on
val records of those relations only (``eval_data`` ``counterfact-held-out``).

``--recipes`` evaluates benchmark editors by recipe name as well (``benchmarks.editors.RECIPES``, trained or
reused under ``benchmarks/work/<name>/`` exactly as ``make bench-scale`` keeps them), so an editor measured
there is measured here without training it again; its rows' ``train_data`` is ``recipe:<name>``.

Each cell applies single edits (``mode`` single) or disjoint batches of 16 (``mode`` batch) and reports the
mean over edits with a 95% interval (normal approximation) of each metric; ``seconds`` is the cell's wall
time. Cells score the first ``--eval-records`` records of a set (a CPU subset; ``arguments`` says so).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from typing import Any

from benchmarks.editors import (
    RECIPES,
    TRAIN_FILE,
    VAL_FILE,
    ZSRE_FILE,
    Recipe,
    check_recipe,
    log_validation,
    protected_for,
    record_recipe,
    train_or_reuse,
)
from benchmarks.run import _machine, add_common_arguments, configure_logging
from benchmarks.scale import interval
from editing.config import LR_SCHEDULES, RECIPE_LOCALITY_WEIGHT
from editing.data.protected_sources import training_texts
from editing.data.records import EditRecord, read_records

os.environ.setdefault("HF_HUB_OFFLINE", "1")
NO_STEP_LIMIT = Recipe.max_steps  # the recipe's default: the time budget alone stops training
LOGGER = logging.getLogger("benchmarks.transfer")
KNOWEDIT_FILE = "knowedit_zsre/ZsRE-test-all.json"
HELD_OUT = "counterfact-held-out"
# Result column -> evaluation row column.
METRICS = {
    "rewrite": "rewrite_acc",
    "rephrase": "rephrase_acc",
    "locality_neighbour": "locality_neighbour",
    "locality_same_subject": "locality_same_subject",
    "portability": "portability_acc",
}


def held_out_relations(labels: Sequence[str], fraction: float, seed: int) -> set[str]:
    """A seeded ``fraction`` of the distinct relation labels (at least one)."""
    distinct = sorted(set(labels))
    count = max(1, round(len(distinct) * fraction))
    return set(random.Random(seed).sample(distinct, count))


def split_by_relation(
    records: Sequence[EditRecord], labels: Sequence[str], held: set[str]
) -> tuple[list[EditRecord], list[EditRecord]]:
    """(records of kept relations, records of held-out relations), in their order."""
    kept = [record for record, label in zip(records, labels, strict=True) if label not in held]
    return kept, [record for record, label in zip(records, labels, strict=True) if label in held]


def summarise(rows: Sequence[dict[str, Any]], **cell: Any) -> dict[str, Any]:
    """One result row: ``cell`` plus, per metric, the mean and 95% interval over the rows that have it."""
    summary = dict(cell)
    for name, column in METRICS.items():
        values = [row[column] for row in rows if row.get(column) is not None]
        mean, low, high = interval(values) if values else (None, None, None)
        summary[name], summary[f"{name}_ci95"], summary[f"{name}_n"] = mean, [low, high], len(values)
    return summary


def batches(records: Sequence[EditRecord], size: int, count: int) -> list[list[EditRecord]]:
    """Up to ``count`` disjoint consecutive batches of exactly ``size`` records."""
    return [list(records[i * size : (i + 1) * size]) for i in range(min(count, len(records) // size))]


def with_same_subject(loaded, records: Sequence[EditRecord], per_edit: int) -> list[EditRecord]:
    """Records with same-subject probes added from the unedited model's confident answers."""
    from editing.data.same_subject import SubjectEdit, same_subject_probes

    edits = [SubjectEdit(r.prompt, r.subject, r.target_new) for r in records]
    probes = same_subject_probes(loaded.model, loaded.tokenizer, edits, (), per_edit=per_edit)
    return [replace(r, locality=(*r.locality, *extra)) for r, extra in zip(records, probes, strict=True)]


def editor_name(mix: str, args: argparse.Namespace) -> str:
    """``transfer-<mix>``, plus the step limit where one is set: equal-step editors are kept apart."""
    return f"transfer-{mix}" + (f"-{args.max_steps}-steps" if args.max_steps != NO_STEP_LIMIT else "")


def train_mix(loaded, args, mix: str, counterfact: list[EditRecord], name: str) -> dict[str, Any]:
    """Train (or reuse ``work/<name>``) the fix run's MEND recipe on ``mix``; its training summary."""
    from editing.data.generator import GeneratorConfig
    from editing.training.checkpoint import load_editor
    from editing.training.mix import training_records
    from editing.training.run import split_records, train_editor

    directory = args.work / name
    recipe = Recipe(name, locality_weight=args.locality_weight, max_steps=args.max_steps,
                    train_minutes=args.train_minutes, lr_schedule=args.lr_schedule)  # fmt: skip
    # Besides the recipe, what this benchmark trains with: an editor from other settings is not reused.
    settings = {"training_mix": mix, "same_subject_weight": args.same_subject_weight,
                "generated_examples": args.generated_examples, "seed": args.seed,
                "counterfact_records": len(counterfact)}  # fmt: skip
    if (directory / "editor.json").is_file():
        check_recipe(directory, recipe, **settings)
        load_editor(directory, base_fingerprint=loaded.fingerprint)  # refuses another model's editor
        return {"reused": str(directory), "recipe": {**asdict(recipe), **settings}}
    generator = GeneratorConfig(examples=args.generated_examples, seed=args.seed)
    records, generation = training_records(
        loaded,
        mix,
        counterfact,
        data_dir=args.data_dir,
        cache_dir=args.work / "generated",
        generator=generator,
    )
    train, held = split_records(records, 100, seed=0)
    train_config, editor_config = recipe.configs(args.train_minutes, args.device)
    train_config = train_config.replace(training_mix=mix, same_subject_loss_weight=args.same_subject_weight)
    started = time.perf_counter()
    # The recipe's general-text KL needs general texts, as the fix run's editor has (benchmarks.editors).
    texts = training_texts(args.data_dir, len(records)) if recipe.general_text_weight else ()
    run = train_editor(loaded, train, held, directory, train_config=train_config, editor_config=editor_config,
                       protected=protected_for(loaded, args.data_dir, args.work), general_texts=texts,
                       on_metrics=log_validation)  # fmt: skip
    record_recipe(directory, recipe, **settings)
    best = next(v for v in run.summary["validations"] if v["step"] == run.summary["best_step"])
    return {"step": run.summary["step"], "steps_per_second": run.summary["steps_per_second"],
            "wall_seconds": time.perf_counter() - started, "train_records": len(train),
            "generation": generation, "best_validation": best,
            "recipe": {**asdict(recipe), **settings}}  # fmt: skip


def evaluate_cells(
    loaded, editor, train_data: str, eval_sets: dict[str, list[EditRecord]], args
) -> list[dict]:
    """Single-edit and batch cells of one editor on every evaluation set."""
    from editing.evaluation.evaluate import run_batch_edit, run_single_edits

    rows = []
    for eval_data, records in eval_sets.items():
        cell = {"train_data": train_data, "eval_data": eval_data}
        if "single" in args.modes:
            started = time.perf_counter()
            evaluation = run_single_edits(editor, loaded.model, loaded.tokenizer, records)
            rows.append(summarise(evaluation.rows, **cell, mode="single", edits=1,
                                  seconds=time.perf_counter() - started))  # fmt: skip
        if "batch" in args.modes:
            started, scored = time.perf_counter(), []
            for batch in batches(records, args.batch_size, args.batches):
                scored += run_batch_edit(editor, loaded.model, loaded.tokenizer, batch).rows
            rows.append(summarise(scored, **cell, mode="batch", edits=args.batch_size,
                                  seconds=time.perf_counter() - started))  # fmt: skip
        LOGGER.info("%s", [{k: v for k, v in r.items() if not k.endswith(("ci95", "_n"))} for r in rows[-2:]])
    return rows


def _eval_sets(loaded, args) -> dict[str, list[EditRecord]]:
    limit = args.eval_records
    sets = {
        "counterfact": read_records(args.data_dir / VAL_FILE, limit=limit).records,
        "zsre": read_records(args.data_dir / ZSRE_FILE, limit=limit).records,
        "knowedit": read_records(args.data_dir / KNOWEDIT_FILE, "knowedit").records,
    }
    sets["knowedit"] = sets["knowedit"][:limit]
    sets["counterfact"] = with_same_subject(loaded, sets["counterfact"], args.same_subject_probes)
    return {name: sets[name] for name in args.eval_sets.split(",")}


def _held_out_sets(loaded, args) -> tuple[list[EditRecord], list[EditRecord], list[str]]:
    """CounterFact train without the held-out relations, and val records of those relations only."""
    from editing.data.relations import relation_labels

    train = read_records(args.data_dir / TRAIN_FILE).records
    val = read_records(args.data_dir / VAL_FILE).records
    labels = relation_labels([*train, *val])
    held = held_out_relations(labels, args.held_out_fraction, args.seed)
    kept_train, _ = split_by_relation(train, labels[: len(train)], held)
    _, held_val = split_by_relation(val, labels[len(train) :], held)
    evaluated = with_same_subject(loaded, held_val[: args.eval_records], args.same_subject_probes)
    return kept_train[: args.train_records], evaluated, sorted(held)


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tag", default="cpu")
    add_common_arguments(parser)
    parser.add_argument("--mixes", default="counterfact,generated,counterfact+generated")
    parser.add_argument("--eval-sets", default="counterfact,zsre,knowedit")
    parser.add_argument("--modes", default="single,batch")
    parser.add_argument("--recipes", default="", help="benchmark editors to evaluate as well, by recipe name "
                        "(benchmarks.editors.RECIPES)")  # fmt: skip
    parser.add_argument("--leave-relations-out", default="counterfact", help="mixes trained without a fifth of "
                        "CounterFact's relations ('' for none)")  # fmt: skip
    parser.add_argument("--held-out-fraction", type=float, default=0.2)
    parser.add_argument("--train-minutes", type=float, default=60.0, help="budget per editor")
    parser.add_argument("--max-steps", type=int, default=NO_STEP_LIMIT, help="step limit per editor: mixes "
                        "compared at equal steps rather than equal minutes")  # fmt: skip
    parser.add_argument(
        "--train-records", type=int, default=1_000, help="CounterFact train records per editor"
    )
    parser.add_argument("--generated-examples", type=int, default=10_000)
    parser.add_argument("--eval-records", type=int, default=500, help="records scored per evaluation set")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=8, help="batches of --batch-size per batch cell")
    parser.add_argument("--locality-weight", type=float, default=RECIPE_LOCALITY_WEIGHT,
                        help="the benchmark recipes' weight, as the recorded editors were trained (the fix "
                        "run's own is FIX_RUN_LOCALITY_WEIGHT)")  # fmt: skip
    parser.add_argument("--lr-schedule", default="constant", choices=LR_SCHEDULES,
                        help="the recorded editors' constant rate, or the fix run's cosine decay")  # fmt: skip
    parser.add_argument("--same-subject-weight", type=float, default=1.0)
    parser.add_argument("--same-subject-probes", type=int, default=2, help="added per CounterFact record")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    unknown = [name for name in filter(None, args.recipes.split(",")) if name not in RECIPES]
    if unknown:
        parser.error(f"--recipes: no recipe named {', '.join(unknown)} (known: {', '.join(RECIPES)})")
    return args


def main(argv: list[str] | None = None) -> None:
    args = _arguments(argv)
    configure_logging()
    from benchmarks.transfer_report import write_transfer
    from editing.core.models import load_model
    from editing.editors import build_editor

    loaded = load_model("default", device=args.device)
    counterfact = read_records(args.data_dir / TRAIN_FILE, limit=args.train_records).records
    eval_sets = _eval_sets(loaded, args)
    rows, training, started = [], {}, time.perf_counter()
    for mix in filter(None, args.mixes.split(",")):
        name = editor_name(mix, args)
        training[name] = train_mix(loaded, args, mix, counterfact, name)
        editor = build_editor("mend", loaded, editor_path=args.work / name)
        rows += evaluate_cells(loaded, editor, mix, eval_sets, args)
    for name in filter(None, args.recipes.split(",")):
        training[name] = train_or_reuse(loaded, args.data_dir, args.work, RECIPES[name], args.train_minutes,
                                        args.device)  # fmt: skip
        editor = build_editor("mend", loaded, editor_path=args.work / name)
        rows += evaluate_cells(loaded, editor, f"recipe:{name}", eval_sets, args)
    held_relations: list[str] = []
    for mix in filter(None, args.leave_relations_out.split(",")):
        kept_train, held_val, held_relations = _held_out_sets(loaded, args)
        name = editor_name(f"{mix}-without-held-out-relations", args)
        training[name] = train_mix(loaded, args, mix, kept_train, name)
        editor = build_editor("mend", loaded, editor_path=args.work / name)
        rows += evaluate_cells(
            loaded, editor, f"{mix} (held-out relations removed)", {HELD_OUT: held_val}, args
        )
    result = {"machine": _machine(args.device), "device": args.device, "fingerprint": loaded.fingerprint,
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "arguments": {k: str(v) for k, v in vars(args).items()},
              "training": training, "held_out_relations": held_relations,
              "evaluation_records": {name: len(records) for name, records in eval_sets.items()},
              "seconds": time.perf_counter() - started, "rows": rows}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"transfer-{args.tag}.json").write_text(json.dumps(result, indent=2, default=float))
    write_transfer(result, args.out, args.tag)


if __name__ == "__main__":
    main()
