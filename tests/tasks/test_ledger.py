"""The flag ledger: transitions, latest-state-wins, and concurrent writers. ``LedgerContract`` also runs on S3."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tasks.ledger import LEDGER_PREFIX, FlagState, IllegalTransitionError, Ledger, LedgerError
from tasks.storage import LocalStore, Store
from tests.tasks.test_flags import make_flag


class LedgerContract:
    """Ledger behaviour every store must support; subclasses provide a ``store`` fixture."""

    def test_latest_state_wins_and_history_is_kept(self, store: Store) -> None:
        ledger = Ledger(store)
        ledger.record(["a", "b"], FlagState.PENDING, run_id="run-1")
        ledger.record(["a"], FlagState.APPLIED, candidate_version=4, run_id="run-1")
        ledger.record(["a"], "promoted", candidate_version="4", run_id="run-2")
        states = Ledger(store).states()  # a fresh reader sees the same thing
        assert {flag_id: entry.state for flag_id, entry in states.items()} == {
            "a": FlagState.PROMOTED,
            "b": FlagState.PENDING,
        }
        history = ledger.history("a")
        assert [entry.state for entry in history] == ["pending", "applied", "promoted"]
        assert [entry.candidate_version for entry in history] == [None, "4", "4"]
        assert [entry.run_id for entry in history] == ["run-1", "run-1", "run-2"]
        assert history[0].at < history[1].at < history[2].at

    def test_illegal_transition_is_refused_and_nothing_is_written(self, store: Store) -> None:
        ledger = Ledger(store)
        ledger.record(["a"], FlagState.PENDING)
        ledger.record(["done"], FlagState.REJECTED, reason="spam")
        objects_before = store.list(LEDGER_PREFIX)
        with pytest.raises(
            IllegalTransitionError, match=r"flag a: cannot move from state 'pending' to 'promoted'"
        ):
            ledger.record(["a"], FlagState.PROMOTED, candidate_version=1)
        with pytest.raises(IllegalTransitionError, match=r"flag done: .*'rejected'.*final"):
            ledger.record(["a", "done"], FlagState.PENDING, run_id="run-2")  # one bad flag stops the batch
        with pytest.raises(IllegalTransitionError, match="no entry"):
            ledger.record(["new"], FlagState.PROMOTED, candidate_version=1)
        assert store.list(LEDGER_PREFIX) == objects_before

    def test_unconsumed_after_applied_failed_gate_and_rejected(self, store: Store) -> None:
        flags = [make_flag(flag_id) for flag_id in ("new", "pending", "applied", "failed", "rejected")]
        ledger = Ledger(store)
        ledger.record(["pending", "applied", "failed", "rejected"], FlagState.PENDING)
        ledger.record(["applied"], FlagState.APPLIED, candidate_version=7)
        ledger.record(["failed"], FlagState.FAILED_GATE, reason="expect_locality_kl_below: 0.31 > 0.1")
        ledger.record(["rejected"], FlagState.REJECTED, reason="duplicate of applied")
        assert [flag.flag_id for flag in ledger.unconsumed(flags)] == ["new", "pending"]
        retried = ledger.unconsumed(flags, retry_failed_gate=True)
        assert [flag.flag_id for flag in retried] == ["new", "pending", "failed"]
        assert ledger.states()["failed"].reason == "expect_locality_kl_below: 0.31 > 0.1"

    def test_flags_in_version(self, store: Store) -> None:
        ledger = Ledger(store)
        ledger.record(["a", "b", "c"], FlagState.APPLIED, candidate_version=2)
        ledger.record(["d"], FlagState.APPLIED, candidate_version=3)
        ledger.record(["c"], FlagState.PENDING)  # candidate 2 discarded for c: back in the queue
        ledger.record(["a"], FlagState.PROMOTED, candidate_version=2)
        assert ledger.flags_in_version(2) == ["a", "b"]
        assert ledger.flags_in_version("3") == ["d"]
        assert ledger.flags_in_version(9) == []

    def test_two_ledgers_writing_concurrently_are_both_kept(self, store: Store) -> None:
        writers = [Ledger(store), Ledger(store)]
        start = threading.Barrier(len(writers))

        def write(index: int) -> None:
            start.wait()
            for batch in range(4):
                ids = [f"w{index}-{batch}-{item}" for item in range(3)]
                writers[index].record(ids, FlagState.PENDING, run_id=f"run-{index}")

        with ThreadPoolExecutor(max_workers=len(writers)) as pool:
            list(pool.map(write, range(len(writers))))
        expected = {
            f"w{index}-{batch}-{item}" for index in range(2) for batch in range(4) for item in range(3)
        }
        assert set(Ledger(store).states()) == expected
        assert len(store.list(LEDGER_PREFIX)) == 8
        assert set(writers[0].states()) == expected  # each writer also sees the other's objects


class TestLocalLedger(LedgerContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> LocalStore:
        return LocalStore(tmp_path / "store")

    def test_repeats_write_nothing_but_new_attempts_do(self, store: LocalStore) -> None:
        ledger = Ledger(store)
        assert ledger.record(["a"], FlagState.APPLIED, candidate_version=1, run_id="r1") is not None
        assert ledger.record(["a"], FlagState.APPLIED, candidate_version=1, run_id="r1") is None
        assert ledger.record(["a"], FlagState.PROMOTED, candidate_version=1, run_id="r2") is not None
        assert ledger.record(["a"], FlagState.PROMOTED, candidate_version=1, run_id="r3") is None  # final
        ledger.record(["b"], FlagState.FAILED_GATE, reason="gate x", run_id="r1")
        assert ledger.record(["b"], FlagState.FAILED_GATE, reason="gate x", run_id="r2") is not None
        assert len(ledger.history("b")) == 2

    def test_applied_twice_in_different_versions_is_refused(self, store: LocalStore) -> None:
        ledger = Ledger(store)
        ledger.record(["a"], FlagState.APPLIED, candidate_version=1, run_id="r1")
        assert (
            ledger.record(["a"], FlagState.APPLIED, candidate_version=1, run_id="r2") is not None
        )  # same version
        with pytest.raises(IllegalTransitionError, match="already applied in candidate version 1"):
            ledger.record(["a"], FlagState.APPLIED, candidate_version=2)

    def test_reasons_and_versions_are_required_where_they_mean_something(self, store: LocalStore) -> None:
        ledger = Ledger(store)
        with pytest.raises(LedgerError, match="flag b needs a reason"):
            ledger.record(["a", "b"], FlagState.REJECTED, reasons={"a": "conflict"})
        with pytest.raises(LedgerError, match="candidate_version is required"):
            ledger.record(["a"], FlagState.APPLIED)
        with pytest.raises(LedgerError, match=r"reasons given for flags not being recorded: \['zz'\]"):
            ledger.record(["a"], FlagState.REJECTED, reason="x", reasons={"zz": "y"})
        with pytest.raises(LedgerError, match=r"more than once: \['a'\]"):
            ledger.record(["a", "a"], FlagState.PENDING)
        with pytest.raises(ValueError, match="'done'"):
            ledger.record(["a"], "done")
        assert store.list() == []

    def test_per_flag_reasons_override_the_shared_one(self, store: LocalStore) -> None:
        ledger = Ledger(store)
        ledger.record(["a", "b"], FlagState.FAILED_GATE, reason="gate failed", reasons={"b": "efficacy 0.2"})
        assert {flag_id: entry.reason for flag_id, entry in ledger.states().items()} == {
            "a": "gate failed",
            "b": "efficacy 0.2",
        }

    def test_a_corrupt_ledger_object_is_an_error_naming_it(self, store: LocalStore) -> None:
        Ledger(store).record(["a"], FlagState.PENDING)
        store.write_json("ledger/bad.json", {"format": "mend-flag-ledger/1", "entries": [{"flag_id": "a"}]})
        with pytest.raises(LedgerError, match=r"bad\.json entry 0: field 'state'"):
            Ledger(store).states()

    def test_a_writer_clock_behind_the_ledger_cannot_reorder_history(self, store: LocalStore) -> None:
        future = "2999-01-01T00:00:00Z"
        entry = {"flag_id": "a", "state": "pending", "at": future, "reason": None}
        store.write_json("ledger/from-the-future.json", {"format": "mend-flag-ledger/1", "entries": [entry]})
        ledger = Ledger(store)
        ledger.record(["a"], FlagState.REJECTED, reason="spam")
        assert ledger.states()["a"].state == FlagState.REJECTED
