"""`mend status`'s flag counts: flags no run has read count as ``new``, and the oldest flag still waiting
to be fixed (new or pending) gives the age people see."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tasks.flags import Flag, append_flags
from tasks.ledger import FlagState, Ledger
from tasks.settings import FixSettings
from tasks.status import flag_counts

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def _flag(prompt: str, hours_ago: float) -> Flag:
    return Flag.create(model_name="m", model_version="1", prompt=prompt, prediction="x", correction="y",
                       reason="wrong", reporter="test", flagged_at=NOW - timedelta(hours=hours_ago))  # fmt: skip


def test_flags_by_state_count_unread_flags_and_the_oldest_waiting_one_gives_the_age(tmp_path):
    settings = FixSettings.from_env(store_uri=str(tmp_path / "store"))
    store = settings.open_store()
    applied, pending, fresh, rejected = (
        _flag(f"prompt {i}", hours) for i, hours in enumerate((50, 30, 2, 80))
    )
    append_flags(store, [applied, pending, fresh, rejected])
    ledger = Ledger(store)
    ledger.record([applied.flag_id], FlagState.APPLIED, candidate_version="2", run_id="r")
    ledger.record([pending.flag_id], FlagState.PENDING, run_id="r")
    ledger.record([rejected.flag_id], FlagState.REJECTED, reason="duplicate", run_id="r")

    counts = flag_counts(settings, now=NOW)
    assert counts["by_state"] == {"applied": 1, "pending": 1, "rejected": 1, "new": 1}
    assert (
        counts["waiting"] == 2 and counts["oldest_waiting_seconds"] == 30 * 3600
    )  # the rejected one is older
