"""Apply: edit the champion with all of this run's records as one batch, and store only what changed.

The result is a snapshot (``editing.core.snapshot``): the new values of the changed tensors relative to the
*base* model, plus the base's fingerprint and a checksum, so a nightly candidate costs a few tens of
megabytes, not another copy of the model.
"""

from __future__ import annotations

import logging

from prefect import task

from editing.core.models import fingerprint
from editing.core.snapshot import SnapshotMetadata, changed_tensors, save_snapshot
from editing.data.records import read_records
from editing.editors import build_editor
from tasks.editor import editor_checkpoint
from tasks.models import load_version, scratch_dir, upload_dir
from tasks.settings import FixSettings

LOGGER = logging.getLogger(__name__)


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
    tuning = {} if settings.editor == "mend" else {"steps": settings.ft_steps, "lr": settings.ft_lr}
    editor = build_editor(settings.editor, champion.loaded, editor_path=editor_dir, **tuning)
    result = editor.edit(model, tokenizer, records)
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
    )
    snapshot_dir = save_snapshot(workspace / "snapshot", changed_tensors(base_values, model), metadata)
    prefix = upload_dir(store, snapshot_dir, f"runs/{run_id}/snapshot")
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
