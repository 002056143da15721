"""The edit ledger in the store: which flags' edits a model's weights hold, and where their rows are cached.

A MEND candidate is the base model plus *one* aggregated edit of its whole ledger (every flag of the
champion it derives from, plus this run's), never an edit stacked on an edited model. Re-solving the
ledger must not cost a pass through the model per old edit, so every fix run saves its edits' rows
(``editing.mend.rows``) under ``edit-rows/<run id>.safetensors``, and every candidate gets a manifest,
``edit-ledger/<result fingerprint>.json``, naming the rows file of each flag in its ledger and the editor
that computed them. The champion's manifest is found from its snapshot's result fingerprint, so a
rollback (which moves the alias back) is followed exactly by the next fix run.

Rows from another editor version are not reused: those edits are recomputed from the flag log.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from editing.data.records import EditRecord
from editing.mend.rows import EditRows
from tasks.flags import read_flag_log
from tasks.storage import Store

LOGGER = logging.getLogger(__name__)
ROWS_PREFIX = "edit-rows/"
MANIFEST_PREFIX = "edit-ledger/"
MANIFEST_FORMAT = "mend-edit-ledger/1"


class EditLedgerError(RuntimeError):
    """A ledger manifest is unreadable or names rows that are not in the store."""


@dataclass
class Manifest:
    """``flags[flag_id]`` is the store key of the rows file holding that flag's edit."""

    editor_uri: str | None = None
    aggregation: str | None = None
    flags: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"format": MANIFEST_FORMAT, "editor_uri": self.editor_uri, "aggregation": self.aggregation,
                "flags": dict(self.flags)}  # fmt: skip

    @classmethod
    def from_json(cls, raw: dict, where: str) -> Manifest:
        if not isinstance(raw, dict) or raw.get("format") != MANIFEST_FORMAT:
            raise EditLedgerError(f"{where}: not a {MANIFEST_FORMAT} manifest")
        flags = raw.get("flags")
        if not isinstance(flags, dict) or not all(isinstance(v, str) for v in flags.values()):
            raise EditLedgerError(f"{where}: field 'flags' must map flag ids to rows keys")
        return cls(raw.get("editor_uri"), raw.get("aggregation"), dict(flags))


def manifest_key(result_fingerprint: str) -> str:
    return f"{MANIFEST_PREFIX}{result_fingerprint}.json"


def read_manifest(store: Store, result_fingerprint: str, ledger_flag_ids: Sequence[str]) -> Manifest:
    """The manifest of a model; an unedited model (empty ledger) has an empty one."""
    key = manifest_key(result_fingerprint)
    if not store.exists(key):
        if ledger_flag_ids:
            raise EditLedgerError(
                f"{key} is missing, but the model's snapshot lists {len(ledger_flag_ids)} ledger flags"
            )
        return Manifest()
    return Manifest.from_json(store.read_json(key), key)


def write_manifest(store: Store, result_fingerprint: str, manifest: Manifest) -> str:
    key = manifest_key(result_fingerprint)
    store.write_json(key, manifest.to_json())
    return key


def save_rows(store: Store, rows: EditRows, run_id: str, workspace: Path) -> str:
    key = f"{ROWS_PREFIX}{run_id}.safetensors"
    store.upload(rows.save(workspace / "edit_rows.safetensors"), key)
    return key


def cached_rows(store: Store, manifest: Manifest, flag_ids: Sequence[str], workspace: Path) -> list[EditRows]:
    """The cached rows of ``flag_ids``, one download per rows file."""
    by_key: dict[str, list[str]] = defaultdict(list)
    for flag_id in flag_ids:
        if flag_id not in manifest.flags:
            raise EditLedgerError(f"flag {flag_id} is in the ledger but not in its manifest")
        by_key[manifest.flags[flag_id]].append(flag_id)
    parts = []
    for index, (key, flags) in enumerate(sorted(by_key.items())):
        if not store.exists(key):
            raise EditLedgerError(f"rows file {key} of {len(flags)} ledger flag(s) is missing from the store")
        parts.append(
            EditRows.load(store.download(key, workspace / f"rows-{index}.safetensors")).select(flags)
        )
    return parts


def ledger_records(store: Store, flag_ids: Sequence[str]) -> list[EditRecord]:
    """Edit records of earlier flags, rebuilt from the flag log (when their rows must be recomputed)."""
    flags = {flag.flag_id: flag for flag in read_flag_log(store).flags}
    missing = [flag_id for flag_id in flag_ids if flag_id not in flags]
    if missing:
        raise EditLedgerError(f"ledger flag(s) {missing[:5]} are not in the flag log")
    return [EditRecord(f, flags[f].prompt, flags[f].correction, subject=flags[f].subject) for f in flag_ids]
