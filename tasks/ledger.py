"""The flag ledger: which state each flag is in, kept as an append-only history in the store.

Every ``record`` call writes one new object ``ledger/<timestamp>-<uuid>.json`` holding a batch of
entries; nothing is ever rewritten, so concurrent runs and crashes cannot lose history. A flag's
current state is its latest entry (by ``at``, then object key, then position in the batch).

States and the moves between them::

    (none) -> pending | applied | rejected | failed_gate
    pending -> pending | applied | rejected | failed_gate
    applied -> promoted | pending (candidate discarded) | rejected | failed_gate | applied (same version)
    failed_gate -> pending | applied | rejected | failed_gate
    promoted, rejected: final

Validation reads the ledger, then writes: two runs racing over the same flags could both pass it,
so flows that record states must not run concurrently (a Prefect concurrency limit of one).
"""

from __future__ import annotations

import enum
import json
import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from tasks.flags import Flag
from tasks.storage import Store

LOGGER = logging.getLogger(__name__)

LEDGER_PREFIX = "ledger/"
LEDGER_FORMAT = "mend-flag-ledger/1"


class FlagState(enum.StrEnum):
    PENDING = "pending"
    APPLIED = "applied"  # edited into candidate model version ``candidate_version``
    PROMOTED = "promoted"  # the candidate holding it was promoted
    REJECTED = "rejected"  # never to be applied; ``reason`` says why
    FAILED_GATE = "failed_gate"  # its edit failed the gate; ``reason`` names the failing expectations


FINAL_STATES = frozenset({FlagState.PROMOTED, FlagState.REJECTED})
ALLOWED_MOVES: dict[FlagState | None, frozenset[FlagState]] = {
    None: frozenset({FlagState.PENDING, FlagState.APPLIED, FlagState.REJECTED, FlagState.FAILED_GATE}),
    FlagState.PENDING: frozenset(
        {FlagState.PENDING, FlagState.APPLIED, FlagState.REJECTED, FlagState.FAILED_GATE}
    ),
    FlagState.APPLIED: frozenset(
        {FlagState.APPLIED, FlagState.PROMOTED, FlagState.PENDING, FlagState.REJECTED, FlagState.FAILED_GATE}
    ),
    FlagState.FAILED_GATE: frozenset(
        {FlagState.PENDING, FlagState.APPLIED, FlagState.REJECTED, FlagState.FAILED_GATE}
    ),
    FlagState.PROMOTED: frozenset(),
    FlagState.REJECTED: frozenset(),
}
NEEDS_REASON = frozenset({FlagState.REJECTED, FlagState.FAILED_GATE})
NEEDS_VERSION = frozenset({FlagState.APPLIED, FlagState.PROMOTED})


class LedgerError(RuntimeError):
    """A ledger object is unreadable, or a request to record is malformed."""


class IllegalTransitionError(LedgerError):
    def __init__(self, flag_id: str, current: LedgerEntry | None, wanted: FlagState, detail: str = ""):
        self.flag_id, self.current, self.wanted = flag_id, current, wanted
        was = "no entry" if current is None else f"state {current.state.value!r}"
        allowed = sorted(state.value for state in ALLOWED_MOVES[current.state if current else None])
        super().__init__(
            f"flag {flag_id}: cannot move from {was} to {wanted.value!r}{detail}; allowed: {allowed or 'none (final)'}"
        )


@dataclass(frozen=True)
class LedgerEntry:
    flag_id: str
    state: FlagState
    at: datetime
    reason: str | None = None
    candidate_version: str | None = None
    run_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "flag_id": self.flag_id,
            "state": self.state.value,
            "reason": self.reason,
            "candidate_version": self.candidate_version,
            "run_id": self.run_id,
            "at": self.at.isoformat().replace("+00:00", "Z"),
        }

    @classmethod
    def from_json(cls, raw: Any, where: str) -> LedgerEntry:
        if not isinstance(raw, dict):
            raise LedgerError(f"{where}: expected an object, got {type(raw).__name__}")
        for name in ("flag_id", "state", "at"):
            if not isinstance(raw.get(name), str):
                raise LedgerError(f"{where}: field {name!r}: expected a string, got {raw.get(name)!r}")
        for name in ("reason", "candidate_version", "run_id"):
            if raw.get(name) is not None and not isinstance(raw[name], str):
                raise LedgerError(f"{where}: field {name!r}: expected a string or null, got {raw[name]!r}")
        try:
            state, at = FlagState(raw["state"]), datetime.fromisoformat(raw["at"])
        except ValueError as error:
            raise LedgerError(f"{where}: {error}") from None
        if at.tzinfo is None:
            raise LedgerError(f"{where}: field 'at': {raw['at']!r} has no time zone")
        optional = {name: raw.get(name) for name in ("reason", "candidate_version", "run_id")}
        return cls(flag_id=raw["flag_id"], state=state, at=at.astimezone(UTC), **optional)


def _is_repeat(current: LedgerEntry | None, new: LedgerEntry) -> bool:
    """Recording what is already recorded (a retried task, a re-run promotion) writes nothing."""
    if current is None or current.state != new.state or current.candidate_version != new.candidate_version:
        return False
    if current.state in FINAL_STATES:
        return True
    return current.reason == new.reason and current.run_id == new.run_id


def _check_move(current: LedgerEntry | None, new: LedgerEntry) -> None:
    if new.state not in ALLOWED_MOVES[current.state if current else None]:
        raise IllegalTransitionError(new.flag_id, current, new.state)
    same_state = current is not None and current.state == new.state == FlagState.APPLIED
    if same_state and current.candidate_version != new.candidate_version:
        # Re-applying into a different version would apply the flag twice.
        detail = f" (already applied in candidate version {current.candidate_version})"
        raise IllegalTransitionError(new.flag_id, current, new.state, detail)


class Ledger:
    """Reads and appends the ledger in ``store``. Ledger objects are immutable, so each one is read once
    and cached; every query lists the prefix again to pick up what other writers added."""

    def __init__(self, store: Store):
        self.store = store
        self._entries_by_key: dict[str, list[LedgerEntry]] = {}

    def record(
        self,
        flag_ids: Iterable[str],
        state: FlagState | str,
        *,
        reason: str | None = None,
        reasons: Mapping[str, str] | None = None,
        candidate_version: str | int | None = None,
        run_id: str | None = None,
    ) -> str | None:
        """Append one entry per flag; returns the new object's key, or None when nothing was new.

        ``reasons`` gives per-flag reasons (overriding ``reason``). The whole batch is validated
        before anything is written, so an illegal move leaves the ledger untouched.
        """
        state = FlagState(state)
        flag_ids = list(flag_ids)
        current = self.states()
        # Never earlier than a flag's latest entry, so a clock behind another writer's cannot reorder history.
        known = [current[flag_id].at for flag_id in flag_ids if flag_id in current]
        at = max([datetime.now(UTC), *(moment + timedelta(microseconds=1) for moment in known)])
        entries = self._entries_for(flag_ids, state, at, reason, reasons, candidate_version, run_id)
        new = [entry for entry in entries if not _is_repeat(current.get(entry.flag_id), entry)]
        for entry in new:
            _check_move(current.get(entry.flag_id), entry)
        if not new:
            LOGGER.debug("ledger: %d %s entries already recorded", len(entries), state.value)
            return None
        key = f"{LEDGER_PREFIX}{at:%Y%m%dT%H%M%S%fZ}-{uuid.uuid4().hex}.json"
        body = {"format": LEDGER_FORMAT, "entries": [entry.to_json() for entry in new]}
        self.store.write_json(key, body)
        self._entries_by_key[key] = new
        LOGGER.info("ledger: recorded %d flags as %s in %s", len(new), state.value, self.store.url(key))
        return key

    def _entries_for(
        self,
        flag_ids: Sequence[str],
        state: FlagState,
        at: datetime,
        reason: str | None,
        reasons: Mapping[str, str] | None,
        candidate_version: str | int | None,
        run_id: str | None,
    ) -> list[LedgerEntry]:
        if len(set(flag_ids)) != len(flag_ids):
            repeated = sorted({flag_id for flag_id in flag_ids if flag_ids.count(flag_id) > 1})
            raise LedgerError(f"record {state.value}: flag ids given more than once: {repeated}")
        unknown = sorted(set(reasons or {}) - set(flag_ids))
        if unknown:
            raise LedgerError(f"record {state.value}: reasons given for flags not being recorded: {unknown}")
        version = None if candidate_version is None else str(candidate_version)
        if state in NEEDS_VERSION and version is None:
            raise LedgerError(f"record {state.value}: candidate_version is required")
        entries = []
        for flag_id in flag_ids:
            flag_reason = (reasons or {}).get(flag_id, reason)
            if state in NEEDS_REASON and not flag_reason:
                raise LedgerError(f"record {state.value}: flag {flag_id} needs a reason")
            entries.append(LedgerEntry(flag_id, state, at, flag_reason, version, run_id))
        return entries

    def _all_entries(self) -> list[LedgerEntry]:
        """Every entry in history order: by time, then object key, then position in the object."""
        keys = [key for key in self.store.list(LEDGER_PREFIX) if key.endswith(".json")]
        unread = [key for key in keys if key not in self._entries_by_key]
        for key, data in zip(unread, self.store.read_many(unread), strict=True):
            self._entries_by_key[key] = self._parse_object(key, data)
        ordered = [
            (entry.at, key, position, entry)
            for key in keys
            for position, entry in enumerate(self._entries_by_key[key])
        ]
        ordered.sort(key=lambda item: item[:3])
        return [item[3] for item in ordered]

    def _parse_object(self, key: str, data: bytes) -> list[LedgerEntry]:
        where = self.store.url(key)
        try:
            body = json.loads(data)
        except json.JSONDecodeError as error:
            raise LedgerError(f"{where}: not valid JSON: {error}") from None
        if not isinstance(body, dict) or body.get("format") != LEDGER_FORMAT:
            raise LedgerError(f"{where}: not a ledger object (expected format {LEDGER_FORMAT!r})")
        if not isinstance(body.get("entries"), list):
            raise LedgerError(f"{where}: field 'entries': expected a list")
        return [
            LedgerEntry.from_json(raw, f"{where} entry {index}") for index, raw in enumerate(body["entries"])
        ]

    def states(self) -> dict[str, LedgerEntry]:
        """The latest entry of every flag the ledger knows."""
        return {entry.flag_id: entry for entry in self._all_entries()}

    def history(self, flag_id: str) -> list[LedgerEntry]:
        return [entry for entry in self._all_entries() if entry.flag_id == flag_id]

    def unconsumed(self, flags: Iterable[Flag], *, retry_failed_gate: bool = False) -> list[Flag]:
        """Flags still to work on: no entry or ``pending``, plus ``failed_gate`` ones if asked."""
        wanted = {FlagState.PENDING} | ({FlagState.FAILED_GATE} if retry_failed_gate else set())
        current = self.states()
        return [
            flag for flag in flags if flag.flag_id not in current or current[flag.flag_id].state in wanted
        ]

    def flags_in_version(self, version: str | int) -> list[str]:
        """Flags whose current state is applied or promoted in candidate ``version``."""
        version = str(version)
        return sorted(
            flag_id
            for flag_id, entry in self.states().items()
            if entry.candidate_version == version and entry.state in NEEDS_VERSION
        )
