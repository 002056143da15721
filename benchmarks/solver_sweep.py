"""How edit-time ridge and protection trade edit strength for locality, on edits no benchmark scores.

``python -m benchmarks.solver_sweep --tag cpu`` edits batches of CounterFact *train* records that the
editor never trained on (records after its first ``train_records``; neither the gate nor ``bench-scale``
scores CounterFact train), once per (ridge multiplier, protection multiplier) on the trained editor's
learned weights. Each batch's rows are computed once and re-solved per setting, so the sweep costs one
scoring pass per setting. Writes ``benchmarks/results/solver-sweep-<tag>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time

from benchmarks.editors import RECIPES, TRAIN_FILE, neighbour_bank_for, subject_pool_for, train_or_reuse
from benchmarks.run import _machine, add_common_arguments, configure_logging
from benchmarks.scale import PPL_TEXTS, Bench, summarise
from editing.data.records import read_records, read_texts
from editing.data.relations import relation_labels
from editing.mend.neighbours import NeighbourSettings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
LOGGER = logging.getLogger("benchmarks.solver_sweep")


def _grid(text: str) -> list[tuple[float, float, int, float, int, int]]:
    """``"1x1,1x16,1x1x8x10,1x1x0x1x8,1x1x0x1x8x6"`` -> [(ridge, protect, bank neighbours per edit, neighbour
    weight, same-wording neighbours per edit, subject-free wordings per edit), ...]."""
    cells = []
    for cell in (c for c in text.split(",") if c):
        parts = [float(x) for x in cell.split("x")]
        if len(parts) not in (2, 4, 5, 6):
            raise argparse.ArgumentTypeError(
                f"grid cell {cell!r}: RIDGExPROTECT, RIDGExPROTECTxNxWEIGHT, RIDGExPROTECTxNxWEIGHTxSUBSTITUTES "
                "or RIDGExPROTECTxNxWEIGHTxSUBSTITUTESxSUBJECT_FREE"
            )
        ridge, protect, neighbours, weight, substitutes, subject_free = (*parts, 0.0, 0.0, 0.0, 0.0)[:6]
        cells.append((ridge, protect, int(neighbours), weight, int(substitutes), int(subject_free)))
    return cells


def same_relation_records(records: list, batch_size: int, count: int) -> list:
    """Up to ``count`` of ``records`` ordered so that each batch of ``batch_size`` shares one relation
    (``editing.data.relations``): the demo's night, where one relation's edits bleed into each other."""
    by_relation: dict[str, list] = {}
    for record, label in zip(records, relation_labels(records), strict=True):
        by_relation.setdefault(label, []).append(record)
    chosen: list = []
    for members in sorted(by_relation.values(), key=len, reverse=True):
        full = len(members) - len(members) % batch_size
        chosen += members[: min(full, count - len(chosen))]
    return chosen


def sweep(
    bench: Bench, editor, records, batch_size: int, grid, ppl_batches: int, bank=None, subjects=None
) -> list[dict]:
    """One row per grid cell (ridge and protection multipliers, neighbours per edit and their weight) over
    disjoint batches of ``batch_size`` records."""
    loaded = bench.loaded
    batches = [records[i : i + batch_size] for i in range(0, len(records) - batch_size + 1, batch_size)]
    batch_rows = [editor.edit_rows(loaded.model, loaded.tokenizer, batch) for batch in batches]
    bench.scores_before(records)  # on the unedited model, before any setting is applied
    device = next(loaded.model.parameters()).device
    rows = []
    for ridge, protect, neighbours, weight, substitutes, subject_free in grid:
        scaled = editor.with_multipliers(ridge=ridge, protect=protect)
        guarded = bool(neighbours or substitutes or subject_free)
        if guarded:
            settings = NeighbourSettings(
                neighbours, weight, substitutes=substitutes, subject_free=subject_free
            )
            scaled = scaled.with_neighbours(bank, settings, subjects)
        scored, ppl, seconds = [], [], []
        for index, (batch, edit_rows) in enumerate(zip(batches, batch_rows, strict=True)):
            started = time.perf_counter()
            if guarded:  # the batch's rows plus its neighbours' zero-shift rows
                edit_rows = scaled.edit_rows(loaded.model, loaded.tokenizer, batch)
            result = scaled.aggregate(edit_rows).to(device)
            seconds.append(time.perf_counter() - started)
            with result.applied(loaded.model):
                evaluation = bench.evaluate(batch, with_perplexity=index < ppl_batches)
            scored += evaluation["rows"]
            ppl += [evaluation["ppl_change"]] if "ppl_change" in evaluation else []
        rows.append(summarise(scored, ridge_multiplier=ridge, protect_multiplier=protect, edits=batch_size,
                              neighbours=neighbours, neighbour_weight=weight, substitutes=substitutes,
                              subject_free=subject_free,
                              batches=len(batches), ppl_change=sum(ppl) / max(1, len(ppl)),
                              solve_seconds=sum(seconds) / len(seconds)))  # fmt: skip
        LOGGER.info("%s", {k: v for k, v in rows[-1].items() if not k.endswith("ci95")})
    return rows


def _scored(records) -> list[str]:
    return [p for r in records for p in (r.prompt, *r.rephrase_prompts, *(q.prompt for q in r.locality))]


def markdown(result: dict) -> str:
    lines = [
        f"# Edit-time solver sweep ({result['device']}, {result['date']})",
        "",
        f"Editor `{result['recipe']}`; CounterFact train records {result['records']} (never trained on)"
        + ("; each batch of one relation." if result.get("same_relation") else "."),
        "",
        "| edits/batch | ridge x | protect x | neighbours x weight | same-wording | subject-free | rewrite | rephrase "
        "| locality | ppl change | solve s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        guarded = row.get("neighbours") or row.get("substitutes") or row.get("subject_free")
        guard = f"{row.get('neighbours', 0)} x {row['neighbour_weight']:g}" if guarded else "-"
        lines.append(
            f"| {row['edits']} | {row['ridge_multiplier']:g} | {row['protect_multiplier']:g} | {guard} | "
            f"{row.get('substitutes') or '-'} | {row.get('subject_free') or '-'} | "
            f"{row['rewrite']:.3f} | {row['rephrase']:.3f} | {row['locality']:.3f} | "
            f"{row['ppl_change']:+.2%} | {row['solve_seconds']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tag", default="cpu")
    add_common_arguments(parser)
    parser.add_argument("--recipe", default="mend-ls")
    parser.add_argument("--train-minutes", type=float, default=10.0)
    parser.add_argument("--records", type=int, default=64, help="edits per setting")
    parser.add_argument("--batch-sizes", default="16")
    parser.add_argument("--grid", type=_grid, default=_grid("1x1,1x16,1x256,1x4096"))
    parser.add_argument("--ppl-batches", type=int, default=1)
    parser.add_argument(
        "--same-relation", action="store_true", help="batches of one relation each (as a night of flags)"
    )
    parser.add_argument(
        "--bank-records", type=int, default=3000, help="CounterFact edit records for neighbours"
    )
    args = parser.parse_args(argv)
    configure_logging()
    from editing.core.models import load_model
    from editing.editors import build_editor

    loaded = load_model("default", device=args.device)
    recipe = RECIPES[args.recipe]
    training = train_or_reuse(loaded, args.data_dir, args.work, recipe, args.train_minutes, args.device)
    editor = build_editor("mend", loaded, editor_path=args.work / recipe.name)
    first = recipe.train_records
    if args.same_relation:  # a wider slice, cut into single-relation batches
        sizes = [int(size) for size in args.batch_sizes.split(",")]
        wide = read_records(args.data_dir / TRAIN_FILE, limit=first + 40 * args.records).records[first:]
        records = same_relation_records(wide, max(sizes), args.records)
    else:
        records = read_records(args.data_dir / TRAIN_FILE, limit=first + args.records).records[first:]
    bench = Bench.measure(loaded, read_texts(args.data_dir / PPL_TEXTS, limit=100))
    bank = None
    if any(cell[2] for cell in args.grid):  # less every prompt this sweep scores
        bank = neighbour_bank_for(loaded, args.data_dir, args.work, records=args.bank_records)
        bank = bank.without(_scored(records))
    subjects = None
    if any(cell[4] for cell in args.grid):  # likewise, no subject that this sweep scores
        subjects = subject_pool_for(loaded, args.data_dir, args.work).without_mentioned(_scored(records))
    rows = []
    for size in (int(s) for s in args.batch_sizes.split(",")):
        rows += sweep(bench, editor, records, size, args.grid, args.ppl_batches, bank, subjects)
    result = {"machine": _machine(args.device), "device": args.device, "date": time.strftime("%Y-%m-%d %H:%M"),
              "recipe": recipe.name, "training": training, "same_relation": args.same_relation, "records": f"{first}..{first + len(records) - 1}",
              "arguments": {k: str(v) for k, v in vars(args).items()}, "rows": rows}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"solver-sweep-{args.tag}.json").write_text(json.dumps(result, indent=2, default=float))
    (args.out / f"solver-sweep-{args.tag}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
