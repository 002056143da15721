"""The ledger lock: created on a server that lacks it, an operator's limit kept, holders serialised."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

pytestmark = pytest.mark.usefixtures("prefect_server")


def _limit(name: str) -> int:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(name).limit


def test_missing_limit_is_created_with_one_slot_and_an_existing_one_is_kept():
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    from flows.locks import ensure_limit

    missing = f"test-{uuid.uuid4().hex[:8]}"
    ensure_limit(missing)
    ensure_limit(missing)  # idempotent
    assert _limit(missing) == 1

    operators = f"test-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=operators, limit=3))
    ensure_limit(operators)
    assert _limit(operators) == 3


def test_ledger_lock_lets_one_holder_in_at_a_time():
    from flows.locks import ledger_lock

    events: list[tuple[str, str]] = []
    first_inside = threading.Event()

    def hold(name: str, seconds: float) -> None:
        with ledger_lock():
            events.append((name, "enter"))
            first_inside.set()
            time.sleep(seconds)
            events.append((name, "exit"))

    first = threading.Thread(target=hold, args=("first", 2.0))
    first.start()
    assert first_inside.wait(timeout=60)
    second = threading.Thread(target=hold, args=("second", 0.0))
    second.start()
    first.join(timeout=120)
    second.join(timeout=120)
    assert events == [("first", "enter"), ("first", "exit"), ("second", "enter"), ("second", "exit")]


@pytest.mark.parametrize("raw", ["59", "86401", "soon"])
def test_ledger_lease_outside_what_prefect_accepts_is_refused(raw, monkeypatch):
    from flows.locks import LEASE_ENV, lease_seconds

    monkeypatch.setenv(LEASE_ENV, raw)
    with pytest.raises(ValueError, match=LEASE_ENV):
        lease_seconds()


def test_ledger_lease_defaults_to_prefects_and_reads_the_environment(monkeypatch):
    from flows.locks import LEASE_ENV, lease_seconds

    monkeypatch.delenv(LEASE_ENV, raising=False)
    assert lease_seconds() == 300.0
    monkeypatch.setenv(LEASE_ENV, "60")
    assert lease_seconds() == 60.0
