"""Extract: turn the flag log into this run's accepted flags; every other flag gets a state and a reason.

Order of screening: malformed lines, then the incoming-flags GX suite, then conflicts and duplicates
within the batch, then repeats of corrections already applied or promoted. Flags applied in a
candidate that was never promoted are carried over, so the new candidate supersedes the old one
instead of silently dropping its edits.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from prefect import task
from prefect.tasks import exponential_backoff

from tasks.flags import Flag, RejectedFlag, normalize, read_flag_log, screen
from tasks.ledger import FlagState, Ledger
from tasks.settings import FixSettings
from tasks.storage import Store

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractResult:
    run_id: str
    flags_key: str  # accepted flags of this run (JSONL), relative to the store
    quarantine_key: str  # every flag rejected by this run, with its reasons
    new_flag_ids: list[str]
    carried_flag_ids: list[str]  # applied in an unpromoted candidate, re-applied in this run
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def flag_ids(self) -> list[str]:
        return self.new_flag_ids + self.carried_flag_ids


def _frame(flags: list[Flag]):
    import pandas as pd

    rows = [flag.to_json() for flag in flags]
    frame = pd.DataFrame(rows, columns=list(rows[0]) if rows else None)
    if "paraphrases" in frame:
        frame["paraphrases"] = frame["paraphrases"].map(list)
    return frame


def _validate(flags: list[Flag], model_name: str) -> tuple[list[Flag], dict[str, str]]:
    """The incoming-flags GX suite: returns the valid flags and a reason per invalid flag id."""
    from expectations.flags import validate_flags

    if not flags:
        return [], {}
    validation = validate_flags(_frame(flags), expected_model_name=model_name)
    valid = [flag for flag, ok in zip(flags, validation.valid_mask, strict=True) if ok]
    reasons = {
        flag.flag_id: "; ".join(row) for flag, row in zip(flags, validation.row_reasons, strict=True) if row
    }
    return valid, reasons


def _repeats_of_earlier_edits(
    flags: list[Flag], known: dict[str, Flag], ledger_states: dict
) -> tuple[list[Flag], list[RejectedFlag]]:
    """Reject a flag that asks for a correction already applied or promoted for the same prompt."""
    done = {
        (normalize(flag.prompt), normalize(flag.correction)): flag_id
        for flag_id, flag in known.items()
        if flag_id in ledger_states
        and ledger_states[flag_id].state in (FlagState.APPLIED, FlagState.PROMOTED)
    }
    kept, rejected = [], []
    for flag in flags:
        earlier = done.get((normalize(flag.prompt), normalize(flag.correction)))
        if earlier is not None and earlier != flag.flag_id:
            state = ledger_states[earlier]
            rejected.append(
                RejectedFlag(
                    flag, f"duplicate of {earlier} ({state.state} in version {state.candidate_version})"
                )
            )
        else:
            kept.append(flag)
    return kept, rejected


def extract_flags(settings: FixSettings, run_id: str, model_name: str) -> ExtractResult:
    store = settings.open_store()
    ledger = Ledger(store)
    log = read_flag_log(store)
    states = ledger.states()
    known = {flag.flag_id: flag for flag in log.flags}

    rejected: dict[str, str] = {}
    for line in log.malformed:
        line_id = f"malformed:{line.source_key}:{line.line_number}"
        if line_id not in states:
            rejected[line_id] = f"malformed flag line: {line.reason}"
    awaiting = [  # applied in a candidate nobody has promoted yet
        flag
        for flag in log.flags
        if flag.flag_id in states and states[flag.flag_id].state == FlagState.APPLIED
    ]
    incoming = ledger.unconsumed(log.flags, retry_failed_gate=settings.retry_failed_gate)

    valid, invalid = _validate(incoming, model_name)
    rejected.update(invalid)
    screened, screened_out = screen(valid)
    accepted, repeats = _repeats_of_earlier_edits(screened, known, states)
    # A carried flag was screened when it was first applied; a new flag must not collide with it.
    carried_prompts = {normalize(flag.prompt) for flag in awaiting}
    collisions = [
        RejectedFlag(f, "a flag for this prompt awaits approval in the current candidate")
        for f in accepted
        if normalize(f.prompt) in carried_prompts
    ]
    accepted = [flag for flag in accepted if normalize(flag.prompt) not in carried_prompts]
    # Only a run with new flags builds a candidate, and that candidate supersedes the awaiting one.
    carried = awaiting if accepted else []
    for item in screened_out + repeats + collisions:
        rejected[item.flag_id if isinstance(item, Flag) else item.flag.flag_id] = item.reason

    if rejected:
        ledger.record(list(rejected), FlagState.REJECTED, reasons=rejected, run_id=run_id)
    quarantine_key = _write_quarantine(store, run_id, rejected, known, log.malformed)
    flags_key = f"runs/{run_id}/flags.jsonl"
    store.write_text(flags_key, "".join(json.dumps(f.to_json()) + "\n" for f in accepted + carried))
    counts = {
        "read": len(log.flags) + len(log.malformed),
        "malformed": len(log.malformed),
        "already_handled": len(log.flags) - len(incoming) - len(carried),
        "invalid": len(invalid),
        "duplicates_or_conflicts": len(screened_out) + len(repeats) + len(collisions),
        "carried_over": len(carried),
        "accepted": len(accepted),
    }
    LOGGER.info("extract %s: %s", run_id, counts)
    return ExtractResult(
        run_id, flags_key, quarantine_key, [f.flag_id for f in accepted], [f.flag_id for f in carried], counts
    )


def _write_quarantine(
    store: Store, run_id: str, rejected: dict[str, str], known: dict[str, Flag], malformed
) -> str:
    raw_lines = {f"malformed:{line.source_key}:{line.line_number}": line.raw_text for line in malformed}
    lines = []
    for flag_id, reason in rejected.items():
        record = {"flag_id": flag_id, "reason": reason}
        if flag_id in known:
            record["flag"] = known[flag_id].to_json()
        else:
            record["raw"] = raw_lines.get(flag_id)
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    key = f"runs/{run_id}/quarantine.jsonl"
    store.write_text(key, "".join(lines))
    return key


def read_flags(store: Store, key: str) -> list[Flag]:
    return [Flag.from_json(json.loads(line)) for line in store.read_text(key).splitlines() if line.strip()]


# A store that does not answer (S3 down, a network partition) is retried with growing pauses: 5, 10 and
# 20 s, on top of botocore's own quick retries (MEND_S3_MAX_ATTEMPTS). Extract writes the ledger only
# after it has read everything, so a run that gives up leaves every flag pending.
EXTRACT_RETRY_DELAYS = exponential_backoff(backoff_factor=5)(3)


@task(name="extract-flags", retries=len(EXTRACT_RETRY_DELAYS), retry_delay_seconds=EXTRACT_RETRY_DELAYS)
def extract_task(settings: FixSettings, run_id: str, model_name: str) -> ExtractResult:
    return extract_flags(settings, run_id, model_name)
