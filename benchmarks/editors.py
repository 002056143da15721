"""The editors the benchmarks compare, each trained once per recipe and reused from ``benchmarks/work/``.

A recipe is everything that makes two trained editors differ: aggregation, the group sizes and
same-relation share of training, loss weights, the time budget. Each trained editor is kept under
``benchmarks/work/<recipe name>/``; a later run reuses it (and refuses one trained for another model).
Protected keys are measured once per base model (``benchmarks/work/protected/``) from sources that no
benchmark scores, minus the editors' own training edits (``editing.data.protected_sources``).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

from editing.config import (
    FIX_RUN_LOCALITY_WEIGHT,
    RECIPE_EDITOR_LR,
    RECIPE_EDITOR_SETTINGS,
    RECIPE_GENERAL_TEXT_EVERY,
    RECIPE_GENERAL_TEXT_WEIGHT,
    RECIPE_LOCALITY_WEIGHT,
    RECIPE_LR_SCHEDULE,
    EditorConfig,
    TrainConfig,
)
from editing.core.models import LoadedModel
from editing.core.targets import resolve_scope
from editing.data.protected_sources import protected_sources, training_texts
from editing.data.records import read_records
from editing.mend.neighbours import BANK_FILE, NeighbourBank, build_neighbour_bank
from editing.mend.protected import PROTECTED_FILE, ProtectedKeys, collect_protected_keys
from editing.mend.substitutes import SubjectPool, cached_subject_pool
from editing.training.checkpoint import STATE_JSON, load_editor
from editing.training.run import split_records, train_editor

LOGGER = logging.getLogger(__name__)
TRAIN_FILE = "counterfact_easyedit_splits/counterfact-train.json"
VAL_FILE = "counterfact_easyedit_splits/counterfact-val.json"
ZSRE_FILE = "zsre_mend_portability/zsre_mend_eval_portability_gpt4.json"
GROUP_SIZES = (1, 2, 4, 8, 16, 32)  # as MEND_EDITOR_GROUP_SIZES's default
RECIPE_FILE = "recipe.json"  # beside each trained editor: what it was trained with


@dataclass(frozen=True)
class Recipe:
    """How one benchmark editor is trained."""

    name: str
    aggregation: str = "least_squares"
    group_sizes: tuple[int, ...] = GROUP_SIZES
    same_relation: float = 0.5
    # The recipe's loss weights (editing.config); the fix run's own settings are `mend-ls-fix-run`'s.
    locality_weight: float = RECIPE_LOCALITY_WEIGHT
    general_text_weight: float = RECIPE_GENERAL_TEXT_WEIGHT
    general_text_every: int = RECIPE_GENERAL_TEXT_EVERY
    # As the fix run trains its editor (tasks/editor.py): a short budget visits each record a few times,
    # so a smaller set keeps the trainer's per-record cache warm.
    train_records: int = 1_000
    val_records: int = 100
    # A step limit besides the time budget: compares recipes at equal steps rather than equal minutes.
    max_steps: int = 1_000_000
    # The recipe's own CPU budget in minutes, overriding the command's --train-minutes (None: the command's),
    # so an editor given the full hour is named and recorded apart from a 10-minute one.
    train_minutes: float | None = None
    # The learning-rate schedule (editing.training.schedule): "cosine" decays to a tenth over the budget.
    lr_schedule: str = "constant"

    def configs(self, minutes: float, device: str) -> tuple[TrainConfig, EditorConfig]:
        train = TrainConfig(
            max_minutes=self.train_minutes or minutes, max_steps=self.max_steps, val_every=200,
            val_records=self.val_records, group_sizes=self.group_sizes, same_relation_fraction=self.same_relation,
            locality_loss_weight=self.locality_weight, general_text_loss_weight=self.general_text_weight,
            general_text_every=self.general_text_every,
            device=device, editor_lr=RECIPE_EDITOR_LR, lr_schedule=self.lr_schedule,
        )  # fmt: skip
        # The fix run's recipe, so the benchmark measures the editor users get.
        return train, EditorConfig(aggregation=self.aggregation, **RECIPE_EDITOR_SETTINGS)


RECIPES = {
    "mend-ls": Recipe("mend-ls"),
    "mend-sum": Recipe("mend-sum", aggregation="sum"),
    # Trained on the batch sizes that break the others (MALMEN trains with the batch it edits): groups up
    # to 256 edits, of which a step still scores only its usual few.
    "mend-ls-wide": Recipe("mend-ls-wide", group_sizes=(1, 4, 16, 64, 256)),
    # `mend-ls` stopped where `mend-ls-wide` stopped in its 10 minutes (457 steps): wide groups against
    # narrow ones at equal steps, not only at equal minutes.
    "mend-ls-457": Recipe("mend-ls-457", max_steps=457),
    # The wide editor with the hour the targets allow (editor trained <= 60 min on 2 CPU cores).
    "mend-ls-wide-60": Recipe("mend-ls-wide-60", group_sizes=(1, 4, 16, 64, 256), train_minutes=60.0),
    # `mend-ls` with its learning rates decayed (cosine, to a tenth) over the same 10 minutes.
    "mend-ls-cosine": Recipe("mend-ls-cosine", lr_schedule="cosine"),
    # The editor a fix run trains today (tasks/settings.py defaults): decayed, twice the locality weight.
    "mend-ls-fix-run": Recipe(
        "mend-ls-fix-run", locality_weight=FIX_RUN_LOCALITY_WEIGHT, lr_schedule=RECIPE_LR_SCHEDULE
    ),
    # `mend-ls-wide-60`'s 1,968 steps (or its hour, whichever ends first) with the learning rates decayed:
    # whether the decay that strengthened the narrow editor also holds the wide one's large batches.
    "mend-ls-wide-cosine-1968": Recipe(
        "mend-ls-wide-cosine-1968",
        group_sizes=(1, 4, 16, 64, 256),
        train_minutes=60.0,
        max_steps=1968,
        lr_schedule="cosine",
    ),
    # `mend-ls-cosine` given the hour the targets allow and the whole train split, as the landed 60-minute
    # single-edit editor had (9,800 records, 5,639 steps): an hour over 1,000 records would visit each
    # one some thirty times.
    "mend-ls-cosine-60": Recipe(
        "mend-ls-cosine-60", train_minutes=60.0, train_records=10_000, val_records=200, lr_schedule="cosine"
    ),
    # The earlier benchmark's editor: single edits, the paper's aggregation and loss weights.
    "mend-single": Recipe(
        "mend-single",
        aggregation="sum",
        group_sizes=(1,),
        same_relation=0.0,
        locality_weight=1.0,
        general_text_weight=0.0,
    ),
}


def protected_for(loaded: LoadedModel, data_dir: Path, work: Path, *, texts: int = 300, facts: int = 1000):
    """The base model's protected keys, measured once into ``work/protected``."""
    directory = work / "protected"
    if (directory / PROTECTED_FILE).is_file():
        return ProtectedKeys.load(directory, base_fingerprint=loaded.fingerprint)
    training = read_records(data_dir / TRAIN_FILE).records
    exclude = [prompt for record in training for prompt in (record.prompt, *record.rephrase_prompts)]
    sources = protected_sources(data_dir, texts=texts, facts=facts, exclude=exclude)
    started = time.perf_counter()
    protected = collect_protected_keys(
        loaded.model, loaded.tokenizer, resolve_scope(loaded.model), loaded.fingerprint,
        texts=sources.texts, facts=sources.facts,
    )  # fmt: skip
    protected.info.update({"excluded_as_scored": sources.excluded, "seconds": time.perf_counter() - started})
    protected.save(directory)
    return protected


class RecipeMismatch(RuntimeError):
    """``benchmarks/work/<name>`` holds an editor trained with another recipe than the one asked for."""


def check_recipe(directory: Path, recipe: Recipe, **extra: Any) -> None:
    """Refuse to reuse an editor whose recorded recipe (with any ``extra`` settings the caller trains with,
    such as a training mix) differs from the one asked for, or that recorded none."""
    path = directory / RECIPE_FILE
    recorded = json.loads(path.read_text()) if path.is_file() else None
    wanted = json.loads(json.dumps({**asdict(recipe), **extra}))  # tuples as lists, as the file holds them
    if recorded is not None:  # a field added since that editor was trained meant its default then
        defaults = json.loads(
            json.dumps({f.name: f.default for f in fields(Recipe) if f.default is not MISSING})
        )
        recorded = {**{k: defaults[k] for k in wanted.keys() - recorded.keys() if k in defaults}, **recorded}
    if recorded != wanted:
        differing = sorted(k for k in wanted if (recorded or {}).get(k) != wanted[k])
        changed = "no recorded recipe" if recorded is None else f"differs in {differing}"
        raise RecipeMismatch(
            f"{directory} holds an editor trained with another recipe ({changed}); "
            f"delete the directory to train {recipe.name!r} again"
        )


def record_recipe(directory: Path, recipe: Recipe, **extra: Any) -> None:
    """What ``check_recipe`` compares against, written beside a newly trained editor."""
    (directory / RECIPE_FILE).write_text(json.dumps({**asdict(recipe), **extra}, indent=1))


def neighbour_bank_for(loaded: LoadedModel, data_dir: Path, work: Path, *, records: int) -> NeighbourBank:
    """The base model's neighbour bank from the first ``records`` CounterFact edit-split records, built once
    into ``work/neighbours-<records>`` (sources as the pipeline's: nothing a benchmark scores)."""
    directory = work / f"neighbours-{records}"
    if (directory / BANK_FILE).is_file():
        return NeighbourBank.load(directory, base_fingerprint=loaded.fingerprint)
    facts = protected_sources(data_dir, texts=0, facts=records).facts
    started = time.perf_counter()
    bank = build_neighbour_bank(
        loaded.model, loaded.tokenizer, resolve_scope(loaded.model), loaded.fingerprint, facts
    )
    bank.save(directory)
    LOGGER.info("neighbour bank: %d known of %d facts in %.0f s", len(bank.facts), len(facts),
                time.perf_counter() - started)  # fmt: skip
    return bank


def subject_pool_for(loaded: LoadedModel, data_dir: Path, work: Path) -> SubjectPool:
    """The base model's subject pool for same-wording neighbours, embedded once into ``work/subjects``
    (subjects as the pipeline's: none that a benchmark scores)."""
    return cached_subject_pool(
        work / "subjects", loaded.model, loaded.tokenizer, data_dir, loaded.fingerprint
    )


def train_or_reuse(
    loaded: LoadedModel, data_dir: Path, work: Path, recipe: Recipe, minutes: float, device: str
) -> dict[str, Any]:
    """Train ``recipe`` for at most ``minutes`` (or its own ``train_minutes``) unless ``work/<name>`` already
    holds it; its summary."""
    directory = work / recipe.name
    if (directory / "editor.json").is_file():
        check_recipe(directory, recipe)
        load_editor(directory, base_fingerprint=loaded.fingerprint)  # refuses another model's editor
        LOGGER.info("reusing the editor in %s", directory)
        return {"reused": str(directory), **recorded_training(directory), "recipe": asdict(recipe)}
    records = read_records(data_dir / TRAIN_FILE, limit=recipe.train_records).records
    train, held_out = split_records(records, recipe.val_records, seed=0)
    train_config, editor_config = recipe.configs(minutes, device)
    protected = protected_for(loaded, data_dir, work) if recipe.aggregation == "least_squares" else None
    started = time.perf_counter()
    run = train_editor(
        loaded, train, held_out, directory, train_config=train_config, editor_config=editor_config,
        protected=protected, on_metrics=log_validation,
        general_texts=training_texts(data_dir, len(records)) if recipe.general_text_weight else (),
    )  # fmt: skip
    record_recipe(directory, recipe)
    return {**training_summary(run.summary), "wall_seconds": time.perf_counter() - started,
            "train_records": len(train), "recipe": asdict(recipe)}  # fmt: skip


def training_summary(trainer: dict[str, Any]) -> dict[str, Any]:
    """Steps, stop reason, the kept validation and every validation's score (how steady training was)."""
    summary = {key: trainer[key] for key in ("step", "best_step", "stop_reason", "elapsed_seconds")}
    best = next(v for v in trainer["validations"] if v["step"] == trainer["best_step"])
    return {**summary, "steps_per_second": trainer["step"] / max(trainer["elapsed_seconds"], 1e-9),
            "best_validation": best,
            "validation_scores": [[v["step"], v["score"]] for v in trainer["validations"]]}  # fmt: skip


def recorded_training(directory: Path) -> dict[str, Any]:
    """``training_summary`` of a kept editor, from the trainer state saved beside it (empty if none)."""
    path = directory / STATE_JSON  # the trainer's own record: steps, stop reason, validations
    return training_summary(json.loads(path.read_text())["trainer"]) if path.is_file() else {}


def log_validation(step: int, metrics: dict[str, float]) -> None:
    if "val/score" in metrics:
        shown = {k.removeprefix("val/"): round(v, 3) for k, v in metrics.items() if "acc" in k or "score" in k
                 or "unchanged" in k}  # fmt: skip
        LOGGER.info("step %d validation: %s", step, shown)
