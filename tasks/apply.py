"""Apply: build the candidate's weights from this run's edits and store only what changed.

MEND builds the candidate from the **base model plus one aggregated edit of the whole ledger**: the
champion's ledger (its flags' rows, cached in the store by earlier runs, ``tasks.edit_ledger``) plus this
run's edits, solved together. Nothing is stacked on an edited model, so a thousand promoted edits cost one
solve, and a rollback followed by a fix run gives exactly base + the rolled-back-to ledger + the new edits.
FT and FT+KL have no rows to re-solve: they edit the champion (stacking, as fine-tuning night after night).

The result is a snapshot (``editing.core.snapshot``): the new values of the changed tensors relative to
the *base* model, plus the base's fingerprint, a checksum and the ledger's flag ids.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace

import torch
from prefect import task

from editing.core.models import LoadedModel, fingerprint
from editing.core.snapshot import SnapshotMetadata, changed_tensors, save_snapshot
from editing.data.records import read_records
from editing.editors import build_editor
from editing.mend.editor import disturbances
from editing.mend.rows import concat_rows
from tasks.edit_ledger import (
    Manifest,
    cached_rows,
    ledger_records,
    read_manifest,
    save_rows,
    write_manifest,
)
from tasks.editor import editor_checkpoint
from tasks.models import load_version, scratch_dir, upload_dir
from tasks.settings import FixSettings

LOGGER = logging.getLogger(__name__)


@torch.no_grad()
def _restore_base(champion) -> LoadedModel:
    """Put the base values back into the champion's model: it is then the base model, verified."""
    parameters = dict(champion.loaded.model.named_parameters())
    for name, value in champion.base_values.items():
        parameters[name].copy_(value)
    if fingerprint(champion.loaded.model) != champion.metadata.base_fingerprint:
        raise RuntimeError("restoring the champion's base values did not give the base model")
    return replace(champion.loaded, fingerprint=champion.metadata.base_fingerprint)


def fix_run_editor(settings: FixSettings, base: LoadedModel, editor_dir):
    """The MEND editor in ``editor_dir`` as a fix run edits with it: the edit-time multipliers, the
    disturbance cap and neighbour protection of ``settings``, on the ``base`` model."""
    editor = (
        build_editor("mend", base, editor_path=editor_dir)
        .with_multipliers(ridge=settings.edit_ridge_multiplier, protect=settings.edit_protect_multiplier)
        .with_disturbance_cap(settings.edit_max_disturbance or math.inf, base.model)
    )
    return _with_neighbours(settings, editor, base)


def _with_neighbours(settings: FixSettings, editor, base: LoadedModel):
    """The editor with neighbour protection (bank facts, same-wording neighbours, subject-free wordings,
    siblings) from the base model, less what this store's gate scores; the editor itself when all are off."""
    from editing.mend.neighbours import NeighbourSettings
    from tasks.protected import neighbour_bank_for, store_scored_prompts, subject_pool_for

    neighbours = NeighbourSettings(
        settings.edit_neighbours, settings.edit_neighbour_weight, substitutes=settings.edit_substitutes,
        subject_free=settings.edit_subject_free, min_probability=settings.edit_substitute_min_probability,
        siblings=settings.edit_siblings,
    )  # fmt: skip
    if not neighbours.enabled:
        return editor
    scored = store_scored_prompts(settings.open_store())
    bank = neighbour_bank_for(settings, base, scored) if settings.edit_neighbours else None
    # The pool also names what siblings may not use (what the gate scores), so siblings need it too.
    wanted = settings.edit_substitutes or settings.edit_siblings
    subjects = subject_pool_for(settings, base, scored) if wanted else None
    return editor.with_neighbours(bank, neighbours, subjects)


def _ledger_edit(settings, champion, editor, records, run_id, editor_uri, workspace):
    """The update of the whole ledger, computed on the base model; returns (result, manifest)."""
    store = settings.open_store()
    model, tokenizer = champion.loaded.model, champion.loaded.tokenizer
    new_ids = [record.record_id for record in records]
    old_ids = [f for f in champion.metadata.ledger_flag_ids if f not in set(new_ids)]
    old = read_manifest(store, champion.metadata.result_fingerprint, champion.metadata.ledger_flag_ids)
    new_rows = editor.edit_rows(model, tokenizer, records)
    rows_key = save_rows(store, new_rows, run_id, workspace)
    manifest = Manifest(editor_uri, editor.aggregation.value, {f: rows_key for f in new_ids})
    parts = []
    if old_ids and old.editor_uri == editor_uri:
        parts = cached_rows(store, old, old_ids, workspace)
        manifest.flags.update({f: old.flags[f] for f in old_ids})
    elif old_ids:  # another editor computed them: recompute once, cache under this run
        LOGGER.info("ledger rows came from %s, not %s: recomputing %d edits", old.editor_uri, editor_uri,
                    len(old_ids))  # fmt: skip
        recomputed = editor.edit_rows(model, tokenizer, ledger_records(store, old_ids))
        parts = [recomputed]
        recomputed_key = save_rows(store, recomputed, f"{run_id}-ledger", workspace)
        manifest.flags.update({f: recomputed_key for f in old_ids})
    started = time.perf_counter()
    result = editor.aggregate(concat_rows([*parts, new_rows]))
    LOGGER.info("solved a ledger of %d edits (%d new) in %.2f s", len(old_ids) + len(new_ids), len(new_ids),
                time.perf_counter() - started)  # fmt: skip
    disturbance = disturbances(result.diagnostics)
    if disturbance:  # how hard the update leans on general behaviour, against the cap
        LOGGER.info("protected-key disturbance, largest %.3g (%s), cap %s", max(disturbance.values()),
                    max(disturbance, key=disturbance.get), editor.disturbance_cap[0])  # fmt: skip
    return result, manifest, [*old_ids, *new_ids]


def update_key(run_id: str) -> str:
    """Where a fix run's update diagnostics are kept (logged to MLflow as ``update/update.json``)."""
    return f"runs/{run_id}/update.json"


def apply_edits(
    settings: FixSettings,
    run_id: str,
    dataset_key: str,
    editor_uri: str | None,
    champion_version: str,
    flag_ids: list[str],
) -> str:
    """Returns the store prefix of the candidate's snapshot."""
    store = settings.open_store()
    workspace = scratch_dir(run_id)
    store.download(dataset_key, workspace / "edit_dataset.jsonl")
    records = read_records(workspace / "edit_dataset.jsonl", "jsonl").records
    editor_dir = editor_checkpoint(settings, editor_uri) if editor_uri else None

    champion = load_version(settings, champion_version)
    model, tokenizer = champion.loaded.model, champion.loaded.tokenizer
    manifest, ledger_ids = None, [*champion.metadata.ledger_flag_ids, *flag_ids]
    if settings.editor == "mend":
        base = _restore_base(champion)
        editor = fix_run_editor(settings, base, editor_dir)
        result, manifest, ledger_ids = _ledger_edit(
            settings, champion, editor, records, run_id, editor_uri, workspace
        )
    else:
        tuning = {"steps": settings.ft_steps, "lr": settings.ft_lr}
        result = build_editor(settings.editor, champion.loaded, **tuning).edit(model, tokenizer, records)
    parameters = dict(model.named_parameters())
    # Base values of everything that may now differ: what the champion replaced, and what this edit touches.
    base_values = {name: parameters[name].detach().clone() for name in result.deltas}
    base_values.update(champion.base_values)
    result.apply(model)  # refuses non-finite weights before writing any
    metadata = SnapshotMetadata(
        base_fingerprint=champion.metadata.base_fingerprint,
        result_fingerprint=fingerprint(model),
        base_model_source=champion.metadata.base_model_source,
        editor=settings.editor,
        derived_from_version=str(champion_version),
        flag_ids=tuple(flag_ids),
        ledger_flag_ids=tuple(dict.fromkeys(ledger_ids)),
    )
    snapshot_dir = save_snapshot(workspace / "snapshot", changed_tensors(base_values, model), metadata)
    if manifest is not None:
        write_manifest(store, metadata.result_fingerprint, manifest)
    prefix = upload_dir(store, snapshot_dir, f"runs/{run_id}/snapshot")
    # What the update did, beside the candidate: per-weight norms and, for MEND, each weight's disturbance
    # of the protected keys against the cap (MEND_EDIT_MAX_DISTURBANCE; "cap": null when unbounded).
    cap = (
        settings.edit_max_disturbance if settings.editor == "mend" and settings.edit_max_disturbance else None
    )
    store.write_json(update_key(run_id), {"editor": settings.editor, "max_disturbance": cap,
                                          "diagnostics": result.diagnostics})  # fmt: skip
    LOGGER.info(
        "applied %d edits to version %s; snapshot in %s", len(records), champion_version, store.url(prefix)
    )
    return prefix


@task(name="apply-edits", retries=1, retry_delay_seconds=5)
def apply_task(
    settings: FixSettings,
    run_id: str,
    dataset_key: str,
    editor_uri: str | None,
    champion_version: str,
    flag_ids: list[str],
) -> str:
    return apply_edits(settings, run_id, dataset_key, editor_uri, champion_version, flag_ids)
