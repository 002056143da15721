"""Many edits at once and night after night: editing quality against the number of edits.

``make bench-scale`` (``python -m benchmarks.scale --tag cpu``) writes ``benchmarks/results/
scale-<tag>.json`` (a ``rows`` list), ``.md`` and one PNG per metric against the number of edits.

* batch: N edits applied as one edit (N = 1 is single edits, each edited alone and undone);
* accumulated: N edits arriving in nights of 20, each night's model kept for the next. MEND builds every
  night's model as the base plus one aggregated edit of the whole ledger (rows cached per night, as the
  pipeline does); FT+KL stacked fine-tunes the previous night's model.

Each cell reports the mean over its edits of rewrite, rephrase and locality success with a 95% interval
(normal approximation over edits), the relative perplexity change on ME-PPL_1k texts, and the seconds the
edit took. Cells whose size is capped for a CPU budget say so in ``subset``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmarks.editors import RECIPES, VAL_FILE, ZSRE_FILE, protected_for, train_or_reuse
from benchmarks.run import _machine, add_common_arguments, configure_logging
from editing.core.apply import EditResult
from editing.data.records import EditRecord, read_records, read_texts
from editing.evaluation.evaluate import RecordScores, compare_scores, perplexity, score_records
from editing.mend.rows import concat_rows

os.environ.setdefault("HF_HUB_OFFLINE", "1")
LOGGER = logging.getLogger("benchmarks.scale")
METRICS = {"rewrite": "rewrite_acc", "rephrase": "rephrase_acc", "locality": "locality_unchanged"}
PPL_TEXTS = "me_ppl/ME-PPL_1k.json"


def interval(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and a 95% interval (normal approximation), clipped to [0, 1]."""
    n = len(values)
    mean = sum(values) / n
    spread = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    half = 1.96 * spread / math.sqrt(n)
    return mean, max(0.0, mean - half), min(1.0, mean + half)


@dataclass
class Bench:
    """The model, the unedited scores of every record (computed once) and the perplexity texts."""

    loaded: Any
    texts: list[str]
    before: dict[str, RecordScores] = field(default_factory=dict)
    perplexity_before: float = 0.0

    @classmethod
    def measure(cls, loaded: Any, texts: list[str]) -> Bench:
        """A bench whose unedited perplexity on ``texts`` is measured now, before any edit."""
        return cls(loaded, texts, perplexity_before=perplexity(loaded.model, loaded.tokenizer, texts))

    def scores_before(self, records: Sequence[EditRecord]) -> list[RecordScores]:
        missing = [r for r in records if r.record_id not in self.before]
        for record, scores in zip(
            missing, score_records(self.loaded.model, self.loaded.tokenizer, missing), strict=True
        ):
            self.before[record.record_id] = scores
        return [self.before[r.record_id] for r in records]

    def evaluate(self, records: Sequence[EditRecord], *, with_perplexity: bool) -> dict[str, Any]:
        """Scores of the model as it is now (edited) against the unedited scores of ``records``, which
        ``scores_before`` must have computed before the edit was applied."""
        missing = [r.record_id for r in records if r.record_id not in self.before]
        if missing:
            raise RuntimeError(f"no unedited scores for {missing[:3]}: call scores_before before editing")
        before = [self.before[r.record_id] for r in records]
        after = score_records(self.loaded.model, self.loaded.tokenizer, records)
        rows = [
            compare_scores(r, b, a, self.loaded.tokenizer)
            for r, b, a in zip(records, before, after, strict=True)
        ]
        result: dict[str, Any] = {"rows": rows}
        if with_perplexity:
            after_ppl = perplexity(self.loaded.model, self.loaded.tokenizer, self.texts)
            result["ppl_change"] = after_ppl / self.perplexity_before - 1
        return result


def summarise(rows: list[dict], **cell: Any) -> dict[str, Any]:
    row = dict(cell)
    for name, column in METRICS.items():
        values = [r[column] for r in rows if r.get(column) is not None]
        mean, low, high = interval(values) if values else (None, None, None)
        row[name], row[f"{name}_ci95"] = mean, [low, high]
    return row


def sample(records: Sequence[EditRecord], limit: int) -> list[EditRecord]:
    """At most ``limit`` records, evenly spaced: a large batch or ledger is scored on a sample for CPU."""
    if len(records) <= limit:
        return list(records)
    if limit == 1:
        return [records[0]]
    spacing = (len(records) - 1) / (limit - 1)
    return [records[round(i * spacing)] for i in range(limit)]


def batch_cells(
    bench: Bench, name: str, aggregation: str, edit: Callable, records, coverage: dict, ppl_batches,
    score_limit: int,
):  # fmt: skip
    """One row per size in ``coverage`` (size -> edits to score): ``max(1, edits // size)`` disjoint
    batches, each edited at once, then (a sample of at most ``score_limit`` of) its edits scored and
    the edit undone."""
    rows = []
    for size, edits in coverage.items():
        if size > len(records):
            LOGGER.warning("%s: batch of %d skipped, only %d records", name, size, len(records))
            continue
        batches = [
            records[i * size : (i + 1) * size] for i in range(max(1, min(edits, len(records)) // size))
        ]
        scored, seconds, ppl = [], [], []
        for index, batch in enumerate(batches):
            bench.scores_before(sample(batch, score_limit))
            started = time.perf_counter()
            result: EditResult = edit(batch)
            seconds.append(time.perf_counter() - started)
            with result.applied(bench.loaded.model):
                evaluation = bench.evaluate(sample(batch, score_limit), with_perplexity=index < ppl_batches)
            scored += evaluation["rows"]
            ppl += [evaluation["ppl_change"]] if "ppl_change" in evaluation else []
        rows.append(summarise(scored, editor=name, aggregation=aggregation, mode="batch", edits=size,
                              ppl_change=sum(ppl) / len(ppl), seconds=sum(seconds) / len(seconds),
                              batches=len(batches), records_scored=len(scored)))  # fmt: skip
        LOGGER.info("%s", {k: v for k, v in rows[-1].items() if not k.endswith("ci95")})
    return rows


def accumulated_cells(
    bench: Bench, name: str, aggregation: str, nightly: Callable, records, checkpoints, night, score_limit
):
    """Nights of ``night`` edits; at each checkpoint N the model holding all N edits is evaluated on
    (an evenly spaced sample of at most ``score_limit`` of) them. ``nightly(records_of_night)`` keeps the
    night's edit and returns a callable that builds the current model as an ``EditResult`` on the base
    (MEND) or None when the edit was applied in place."""
    for checkpoint in checkpoints:  # unedited scores first: a stacked editor changes the model in place
        bench.scores_before(sample(records[:checkpoint], score_limit))
    rows, done, seconds = [], 0, 0.0
    for checkpoint in sorted(checkpoints):
        while done < checkpoint:
            size = min(night, checkpoint - done)
            started = time.perf_counter()
            build = nightly(records[done : done + size])
            seconds += time.perf_counter() - started
            done += size
        started = time.perf_counter()
        result = build() if build is not None else None
        solve_seconds = time.perf_counter() - started
        scored = sample(records[:done], score_limit)
        if result is None:
            evaluation = bench.evaluate(scored, with_perplexity=True)
        else:
            with result.applied(bench.loaded.model):
                evaluation = bench.evaluate(scored, with_perplexity=True)
        rows.append(summarise(evaluation["rows"], editor=name, aggregation=aggregation, mode="accumulated",
                              edits=done, records_scored=len(scored), night_size=night,
                              ppl_change=evaluation["ppl_change"],
                              seconds=seconds + solve_seconds, solve_seconds=solve_seconds))  # fmt: skip
        LOGGER.info("%s", {k: v for k, v in rows[-1].items() if not k.endswith("ci95")})
    return rows


def mend_nightly(editor, loaded, aggregation):
    """Nights for MEND: each night's rows are computed on the base model and kept; the model after a
    night is the base plus one solve of every row so far (the pipeline's ledger)."""
    nights = []

    def nightly(records):
        nights.append(editor.edit_rows(loaded.model, loaded.tokenizer, records))
        return lambda: editor.aggregate(concat_rows(nights), aggregation=aggregation)

    return nightly


def stacked_nightly(editor, loaded):
    """Nights for a fine-tuning editor: each night edits the current (already edited) model in place."""

    def nightly(records):
        editor.edit(loaded.model, loaded.tokenizer, records).apply(loaded.model)
        return None

    return nightly


def _kl_reference(data_dir: Path):
    """FT+KL keeps 32 train-split neighbourhood prompts in place (never the evaluated records' own)."""
    from benchmarks.editors import TRAIN_FILE

    return [r.locality[0] for r in read_records(data_dir / TRAIN_FILE, limit=32).records]


def mend_cells(bench: Bench, args, name: str, aggregation: str, editor, records_by_set) -> list[dict]:
    """A MEND editor's batch cells per data set, then its accumulated cells on CounterFact."""
    loaded, rows = bench.loaded, []
    for data_set, records in records_by_set.items():
        edit = lambda batch: editor.edit(loaded.model, loaded.tokenizer, batch)  # noqa: E731
        cells = batch_cells(bench, name, aggregation, edit, records, _coverage(args, args.sizes),
                            args.ppl_batches, args.score_limit)  # fmt: skip
        rows += [{**cell, "data": data_set} for cell in cells]
    nightly = mend_nightly(editor, loaded, aggregation)
    return rows + [{**c, "data": "counterfact"} for c in accumulated_cells(
        bench, name, aggregation, nightly, records_by_set["counterfact"], args.accumulated, args.night,
        args.score_limit)]  # fmt: skip


def run_editor(bench: Bench, args, name: str, records_by_set: dict[str, list[EditRecord]]) -> list[dict]:
    """Every cell of one editor: batch cells per data set, then accumulated cells on CounterFact."""
    from editing.editors import build_editor

    loaded, rows = bench.loaded, []
    counterfact = records_by_set["counterfact"]
    if name.startswith("mend"):
        aggregation = RECIPES[name].aggregation
        trained = build_editor("mend", loaded, editor_path=args.work / name)
        for cap in args.max_disturbance if aggregation == "least_squares" else [None]:
            editor = trained if cap is None else trained.with_disturbance_cap(cap, loaded.model)
            label = name if cap is None else f"{name}, cap {cap:g}"
            cells = mend_cells(bench, args, label, aggregation, editor, records_by_set)
            rows += [{**cell, "max_disturbance": cap} for cell in cells]
        return rows
    editor = build_editor("ft-kl", loaded, kl_reference=_kl_reference(args.data_dir))
    if name == "ft-kl":
        sizes = [size for size in args.sizes if size <= args.ft_max_batch]
        edit = lambda batch: editor.edit(loaded.model, loaded.tokenizer, batch)  # noqa: E731
        coverage = {size: args.ft_coverage for size in sizes}
        cells = batch_cells(
            bench, name, "fine-tuning", edit, counterfact, coverage, args.ppl_batches, args.score_limit
        )
        return [
            {**cell, "data": "counterfact", "subset": f"batch sizes up to {args.ft_max_batch}"}
            for cell in cells
        ]
    originals = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    try:
        checkpoints = [c for c in args.accumulated if c <= args.ft_max_accumulated]
        cells = accumulated_cells(bench, name, "fine-tuning", stacked_nightly(editor, loaded), counterfact,
                                  checkpoints, args.night, args.score_limit)  # fmt: skip
    finally:
        with torch.no_grad():
            for n, p in loaded.model.named_parameters():
                p.copy_(originals[n])
    return [{**c, "data": "counterfact", "subset": f"up to {args.ft_max_accumulated} edits"} for c in cells]


def _coverage(args, sizes) -> dict[int, int]:
    """Edits scored per batch size: ``single_records`` single edits, ``coverage`` for larger batches."""
    return {size: args.single_records if size == 1 else args.coverage for size in sizes}


def _numbers(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def _caps(text: str) -> list[float | None]:
    """``"none,0.05"`` -> [None, 0.05]: each least-squares editor is measured once per cap (None: unbounded)."""
    caps = [None if part.lower() == "none" else float(part) for part in text.split(",") if part]
    if not caps or any(cap is not None and not cap > 0 for cap in caps):
        raise argparse.ArgumentTypeError(f"caps must be 'none' or positive numbers, got {text!r}")
    return caps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tag", default="cpu")
    add_common_arguments(parser)
    parser.add_argument("--editors", default="mend-ls,mend-sum,ft-kl,ft-kl-stacked")
    parser.add_argument(
        "--train-minutes", type=float, default=10.0, help="budget per MEND editor (the fix run's default)"
    )
    parser.add_argument("--sizes", type=_numbers, default=_numbers("1,16,64,256,1024"))
    parser.add_argument(
        "--coverage", type=int, default=256, help="edits scored per batch size (at least one batch)"
    )
    parser.add_argument(
        "--single-records", type=int, default=500, help="records edited one at a time (size 1)"
    )
    parser.add_argument(
        "--score-limit", type=int, default=1024, help="edits scored per batch or ledger (an even sample)"
    )
    parser.add_argument("--accumulated", type=_numbers, default=_numbers("10,100,1000"))
    parser.add_argument("--night", type=int, default=20)
    parser.add_argument("--data-sets", default="counterfact,zsre")
    parser.add_argument("--ft-max-batch", type=int, default=256, help="FT+KL batch cells up to this size")
    parser.add_argument("--ft-coverage", type=int, default=64)
    parser.add_argument("--ft-max-accumulated", type=int, default=1000)
    parser.add_argument(
        "--ppl-batches", type=int, default=2, help="batches per cell whose perplexity is measured"
    )
    parser.add_argument("--ppl-texts", type=int, default=100)
    parser.add_argument(
        "--max-disturbance", type=_caps, default=[None],
        help="edit-time disturbance caps for least-squares editors, e.g. none,0.05 (benchmarks/disturbance.py)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    configure_logging()
    from editing.core.models import load_model

    loaded = load_model("default", device=args.device)
    files = {"counterfact": VAL_FILE, "zsre": ZSRE_FILE}
    needed = max(max(args.sizes), max(args.accumulated), args.single_records)
    records_by_set = {name: read_records(args.data_dir / files[name], limit=needed).records
                      for name in args.data_sets.split(",")}  # fmt: skip
    bench = Bench.measure(loaded, read_texts(args.data_dir / PPL_TEXTS, limit=args.ppl_texts))
    training = {}
    for name in args.editors.split(","):
        if name in RECIPES:
            training[name] = train_or_reuse(loaded, args.data_dir, args.work, RECIPES[name], args.train_minutes,
                                            args.device)  # fmt: skip
    protected = protected_for(loaded, args.data_dir, args.work)
    rows: list[dict] = []
    started = time.perf_counter()
    for name in args.editors.split(","):
        rows += run_editor(bench, args, name, records_by_set)
    result = {"machine": _machine(args.device), "device": args.device, "fingerprint": loaded.fingerprint,
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "arguments": {k: str(v) for k, v in vars(args).items()},
              "training": training, "protected_keys": protected.info, "perplexity_before": bench.perplexity_before,
              "evaluation_seconds": time.perf_counter() - started, "rows": rows}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"scale-{args.tag}.json").write_text(json.dumps(result, indent=2, default=float))
    from benchmarks.report import write_scale

    write_scale(result, args.out, args.tag)


if __name__ == "__main__":
    main()
