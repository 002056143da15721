"""Settings of a fix run: where flags, artifacts and the registry live, and how edits are made.

Every value has an embedded default (a local store and a local MLflow under ``$MEND_HOME``, the default
SmolLM2 model, a MEND editor trained on CounterFact), can be overridden by an environment variable, and
is validated when the settings are built, so a typo fails before any work starts.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Self

from editing.config import (
    FIX_RUN_LOCALITY_WEIGHT,
    LR_SCHEDULES,
    RECIPE_GENERAL_TEXT_EVERY,
    RECIPE_GENERAL_TEXT_WEIGHT,
    RECIPE_LR_SCHEDULE,
    SUBJECT_FREE_FILLERS,
)
from tasks.tracking import mend_home

EDITORS = ("mend", "ft-kl", "ft")
AGGREGATIONS = ("least_squares", "sum")
# Same-wording neighbours per edit at edit time (see FixSettings.edit_substitutes).
DEFAULT_EDIT_SUBSTITUTES = 8
# Subject-free wordings per edit at edit time (see FixSettings.edit_subject_free).
DEFAULT_EDIT_SUBJECT_FREE = 0
# Sibling subjects per edit at edit time (see FixSettings.edit_siblings).
DEFAULT_EDIT_SIBLINGS = 0
# How sure the base model must be of a same-wording neighbour's answer for it to be held (first token).
DEFAULT_EDIT_SUBSTITUTE_MIN_PROBABILITY = 0.3
# The cap on a least-squares update's disturbance (FixSettings.edit_max_disturbance): 0.00345, rounded, is
# what the fix run's own recipe disturbs at its largest training group, 32 edits (95th percentile,
# benchmarks/results/disturbance-fixrun-cpu.md); a night of 20 stays under it, a ledger of hundreds not.
DEFAULT_EDIT_MAX_DISTURBANCE = 0.0035


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names it and its environment variable."""


def _default_data_dir() -> Path:
    configured = os.environ.get("MEND_DATA_DIR")
    return Path(configured) if configured else Path.cwd().parent / "shared" / "data"


@dataclass(frozen=True)
class FixSettings:
    store_uri: str  # flags, ledger, run artifacts: s3://bucket/prefix/ or a local directory
    tracking_uri: str | None  # MLflow; None means the local SQLite default
    registered_model: str  # MLflow registered model holding the champion and candidates
    base_model: str  # "default", a safetensors directory, a .gguf file or a hub id
    editor: str  # mend | ft-kl | ft
    editor_train_minutes: float  # CPU time budget when an editor must be trained first
    editor_train_steps: int
    # CounterFact train records used to train an editor. Under a short CPU budget a smaller set seen
    # several times (its frozen prefixes cached after the first pass) beats one slow pass over more.
    editor_train_records: int
    # How that editor combines a batch of edits (sum | least_squares) and the group sizes it trains on:
    # a fix run applies all of a ledger's edits as one update, which an editor trained only on single
    # edits cannot take (see README). Sizes as "1,2,4"; a share of groups is same-relation on purpose.
    editor_aggregation: str
    editor_group_sizes: str
    editor_same_relation: float
    # Weights of that training's locality terms (TrainConfig.locality_loss_weight and
    # general_text_loss_weight). The paper's 1.0 and no general text suit single edits; a summed batch
    # of related edits needs more weight on leaving other prompts alone (see README).
    editor_locality_weight: float
    editor_general_text_weight: float
    editor_general_text_every: int  # the general-text term on every k-th step only (it costs a forward pass)
    editor_lr_schedule: str  # constant | cosine (TrainConfig.lr_schedule): cosine decays over the budget
    # Edit-time scaling of the editor's learned ridge and protection (benchmarks/solver_sweep.py).
    edit_ridge_multiplier: float
    edit_protect_multiplier: float
    # The most a least-squares update may move the protected keys' outputs, as a share of each weight's
    # own output energy over them (MendEditor.with_disturbance_cap); 0 is unbounded.
    edit_max_disturbance: float
    # Neighbour protection (editing.mend.neighbours): each edit's nearest known facts, from the first
    # ``neighbour_bank_records`` CounterFact edit-split records, held in place by the solve; 0 is off.
    edit_neighbours: int
    edit_neighbour_weight: float
    neighbour_bank_records: int
    # Same-wording neighbours (editing.mend.substitutes): per edit, its own prompt about up to this many
    # similar subjects that the base model answers confidently, held in place the same way; 0 is off.
    # 8 by default: on two demo editors it moved neighbour locality 0.925 -> 0.9496 and 0.903 -> 0.942,
    # where 16 and 32 cost paraphrase success without more locality (README).
    edit_substitutes: int
    # The first-token probability a same-wording neighbour's answer needs to be held (0: every answer, the
    # near ties too: a zero-shift row holds the layer's output there, whatever the answer is).
    edit_substitute_min_probability: float
    # Subject-free wordings (editing.mend.substitutes.subject_free_facts): per edit, its own prompt with up to
    # 6 fillers that name nothing ("it was painted by") in the subject's place, held in place the same way,
    # so the update rides on what is particular to the subject; 0 is off.
    edit_subject_free: int
    # Sibling subjects (editing.mend.siblings): per edit, its own prompt with up to this many words the base
    # model itself puts in place of the subject's last word ("the planet closest to the Earth"), held in
    # place the same way, whatever the model answers there; 0 is off.
    edit_siblings: int
    data_dir: str  # the public editing benchmarks (CounterFact for training, ME-PPL for perplexity)
    # Protected keys of the base model (least squares): general texts and CounterFact edit-split records
    # whose facts the model answers right (editing.data.protected_sources).
    protected_texts: int
    protected_facts: int
    locality_pool_prompts: int  # reference prompts (CounterFact neighbourhood prompts) in the pool
    locality_per_edit: int  # locality probes per edit (half hard neighbours, half random)
    reference_texts: int  # ME-PPL sentences for the perplexity check
    retry_failed_gate: bool  # also retry flags whose previous candidate failed the gate
    thresholds_path: str | None  # JSON of gate thresholds; None means the defaults
    # Name of a Prefect Secret block holding S3 settings as JSON (endpoint_url, access_key_id,
    # secret_access_key, region_name, addressing_style); None reads them from the environment.
    s3_block: str | None = None
    # Prefect notification block ("<type-slug>/<name>") told about failed gates and candidates waiting
    # for an approval (tasks.notify); None sends nothing (the Prefect events are emitted either way).
    notify_block: str | None = None
    ft_steps: int = 10  # FT / FT+KL editors: Adam steps per edit
    ft_lr: float = 1e-4  # FT / FT+KL editors: learning rate
    # Same-subject locality probes per edit: the flagged subject's other facts that the champion answers
    # (editing.data.same_subject), judged apart from the neighbour probes (0: none).
    same_subject_per_edit: int = 2
    # First-token probability the champion must give a template fact for it to count as known.
    same_subject_min_probability: float = 0.3

    def __post_init__(self) -> None:
        if self.editor not in EDITORS:
            raise SettingsError(f"editor {self.editor!r} (MEND_EDITOR): choose one of {EDITORS}")
        for name in (
            "editor_train_minutes",
            "editor_train_steps",
            "editor_train_records",
            "locality_per_edit",
            "protected_texts",
            "protected_facts",
            "edit_ridge_multiplier",
            "editor_general_text_every",
            "neighbour_bank_records",
        ):
            if not getattr(self, name) > 0:
                raise SettingsError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("editor_locality_weight", "editor_general_text_weight", "edit_protect_multiplier",
                     "edit_max_disturbance",
                     "edit_neighbours", "edit_neighbour_weight", "edit_substitutes", "edit_subject_free", "edit_siblings",
                     "same_subject_per_edit"):  # fmt: skip
            if not getattr(self, name) >= 0:  # also refuses NaN
                raise SettingsError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.edit_subject_free > len(SUBJECT_FREE_FILLERS):
            raise SettingsError(
                f"edit_subject_free (MEND_EDIT_SUBJECT_FREE) is at most {len(SUBJECT_FREE_FILLERS)}, "
                f"got {self.edit_subject_free}"
            )
        if self.editor_lr_schedule not in LR_SCHEDULES:
            raise SettingsError(
                f"editor_lr_schedule {self.editor_lr_schedule!r} (MEND_EDITOR_LR_SCHEDULE): one of {LR_SCHEDULES}"
            )
        if self.editor_aggregation not in AGGREGATIONS:
            raise SettingsError(
                f"editor_aggregation {self.editor_aggregation!r} (MEND_EDITOR_AGGREGATION): one of {AGGREGATIONS}"
            )
        if not 0 <= self.edit_substitute_min_probability <= 1:
            raise SettingsError(
                "edit_substitute_min_probability (MEND_EDIT_SUBSTITUTE_MIN_PROBABILITY) must be in [0, 1]"
            )
        if not 0 <= self.same_subject_min_probability <= 1:
            raise SettingsError(
                "same_subject_min_probability (MEND_SAME_SUBJECT_MIN_PROBABILITY) must be in [0, 1]"
            )
        if not 0 <= self.editor_same_relation <= 1:
            raise SettingsError("editor_same_relation (MEND_EDITOR_SAME_RELATION) must be in [0, 1]")
        self.group_sizes()  # parses, or names the variable
        if not self.registered_model:
            raise SettingsError("registered_model (MEND_REGISTERED_MODEL) must be non-empty")

    @classmethod
    def from_env(cls, **overrides: Any) -> Self:
        environ = os.environ
        values: dict[str, Any] = {
            "store_uri": environ.get("MEND_STORE_URI", str(mend_home() / "store")),
            "tracking_uri": environ.get("MEND_MLFLOW_TRACKING_URI") or environ.get("MLFLOW_TRACKING_URI"),
            "registered_model": environ.get("MEND_REGISTERED_MODEL", "mend-smollm2-135m-instruct"),
            "base_model": environ.get("MEND_BASE_MODEL", "default"),
            "editor": environ.get("MEND_EDITOR", "mend"),
            "editor_train_minutes": _number("MEND_EDITOR_TRAIN_MINUTES", 10.0),
            "editor_train_steps": int(_number("MEND_EDITOR_TRAIN_STEPS", 100_000)),
            "editor_train_records": int(_number("MEND_EDITOR_TRAIN_RECORDS", 1_000)),
            "editor_aggregation": environ.get("MEND_EDITOR_AGGREGATION", "least_squares"),
            "editor_group_sizes": environ.get("MEND_EDITOR_GROUP_SIZES", "1,2,4,8,16,32"),
            "editor_same_relation": _number("MEND_EDITOR_SAME_RELATION", 0.5),
            "editor_locality_weight": _number("MEND_EDITOR_LOCALITY_WEIGHT", FIX_RUN_LOCALITY_WEIGHT),
            "editor_general_text_weight": _number(
                "MEND_EDITOR_GENERAL_TEXT_WEIGHT", RECIPE_GENERAL_TEXT_WEIGHT
            ),
            "editor_general_text_every": int(
                _number("MEND_EDITOR_GENERAL_TEXT_EVERY", RECIPE_GENERAL_TEXT_EVERY)
            ),
            "editor_lr_schedule": environ.get("MEND_EDITOR_LR_SCHEDULE", RECIPE_LR_SCHEDULE),
            "edit_ridge_multiplier": _number("MEND_EDIT_RIDGE_MULTIPLIER", 1.0),
            "edit_protect_multiplier": _number("MEND_EDIT_PROTECT_MULTIPLIER", 1.0),
            "edit_max_disturbance": _number("MEND_EDIT_MAX_DISTURBANCE", DEFAULT_EDIT_MAX_DISTURBANCE),
            "edit_neighbours": int(_number("MEND_EDIT_NEIGHBOURS", 0)),
            "edit_neighbour_weight": _number("MEND_EDIT_NEIGHBOUR_WEIGHT", 1.0),
            "neighbour_bank_records": int(_number("MEND_NEIGHBOUR_BANK_RECORDS", 3000)),
            "edit_substitutes": int(_number("MEND_EDIT_SUBSTITUTES", DEFAULT_EDIT_SUBSTITUTES)),
            "edit_subject_free": int(_number("MEND_EDIT_SUBJECT_FREE", DEFAULT_EDIT_SUBJECT_FREE)),
            "edit_siblings": int(_number("MEND_EDIT_SIBLINGS", DEFAULT_EDIT_SIBLINGS)),
            "edit_substitute_min_probability": _number(
                "MEND_EDIT_SUBSTITUTE_MIN_PROBABILITY", DEFAULT_EDIT_SUBSTITUTE_MIN_PROBABILITY
            ),
            "data_dir": str(_default_data_dir()),
            "protected_texts": int(_number("MEND_PROTECTED_TEXTS", 200)),
            "protected_facts": int(_number("MEND_PROTECTED_FACTS", 500)),
            "locality_pool_prompts": int(_number("MEND_LOCALITY_POOL_PROMPTS", 200)),
            "locality_per_edit": int(_number("MEND_LOCALITY_PER_EDIT", 4)),
            "reference_texts": int(_number("MEND_REFERENCE_TEXTS", 100)),
            "retry_failed_gate": environ.get("MEND_RETRY_FAILED_GATE", "false").lower()
            in ("1", "true", "yes"),
            "thresholds_path": environ.get("MEND_GATE_THRESHOLDS"),
            "s3_block": environ.get("MEND_S3_BLOCK"),
            "notify_block": environ.get("MEND_NOTIFY_BLOCK") or None,
            "ft_steps": int(_number("MEND_FT_STEPS", 10)),
            "ft_lr": _number("MEND_FT_LR", 1e-4),
            "same_subject_per_edit": int(_number("MEND_SAME_SUBJECT_PER_EDIT", 2)),
            "same_subject_min_probability": _number("MEND_SAME_SUBJECT_MIN_PROBABILITY", 0.3),
        }
        return cls(**{**values, **overrides})

    def group_sizes(self) -> tuple[int, ...]:
        try:
            sizes = tuple(int(part) for part in self.editor_group_sizes.split(","))
        except ValueError:
            sizes = ()
        if not sizes or min(sizes) < 1:
            raise SettingsError(
                f"editor_group_sizes {self.editor_group_sizes!r} (MEND_EDITOR_GROUP_SIZES): "
                "positive integers separated by commas, e.g. 1,2,4,8"
            )
        return sizes

    def with_changes(self, **changes: Any) -> Self:
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> Self:
        return cls(**values)

    def open_store(self):
        """The flag/artifact store, with S3 settings from the Prefect block when one is named."""
        from tasks.storage import S3Settings, open_store

        s3_settings = None
        if self.s3_block and self.store_uri.startswith("s3://"):
            from prefect.blocks.system import Secret

            s3_settings = S3Settings(**Secret.load(self.s3_block).get())
        return open_store(self.store_uri, s3_settings=s3_settings)

    def thresholds(self):
        from expectations.gate import GateThresholds

        if self.thresholds_path is None:
            return GateThresholds()
        return GateThresholds.from_dict(json.loads(Path(self.thresholds_path).read_text()))

    def data_file(self, relative: str) -> Path:
        path = Path(self.data_dir) / relative
        if not path.is_file():
            raise SettingsError(
                f"{path} not found: set MEND_DATA_DIR to the folder holding the benchmark data"
            )
        return path


def _number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
