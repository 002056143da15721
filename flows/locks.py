"""The ledger lock: fix and promotion runs read, check and then write the flag ledger (and move
registry aliases), so at most one of them may run at a time, across every deployment and worker."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

LEDGER_LIMIT = "mend-ledger"
# The slot is a lease the holder renews while it runs. A run whose process died (a killed worker) holds
# it until the lease expires, so the lease is what a rerun waits for. Prefect's server accepts 60 s to a
# day; 300 s is Prefect's default.
LEASE_ENV = "MEND_LEDGER_LEASE_SECONDS"
DEFAULT_LEASE_SECONDS = 300.0


def lease_seconds() -> float:
    raw = os.environ.get(LEASE_ENV, str(DEFAULT_LEASE_SECONDS))
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{LEASE_ENV}={raw!r} is not a number of seconds") from None
    if not 60 <= value <= 86400:
        raise ValueError(f"{LEASE_ENV}={raw!r}: Prefect leases last 60 s to one day")
    return value


def ensure_limit(name: str, limit: int = 1) -> None:
    """Create the global concurrency limit ``name`` when the server has none; an existing one (an
    operator's ``prefect gcl create``) keeps its settings."""
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            # Another run may create it between our read and our write; theirs is as good as ours.
            with suppress(ObjectAlreadyExists):
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))


@contextmanager
def ledger_lock() -> Iterator[None]:
    """Hold the one ``mend-ledger`` slot for the duration of the block (waiting for it if taken)."""
    ensure_limit(LEDGER_LIMIT)
    with concurrency(LEDGER_LIMIT, occupy=1, strict=True, lease_duration=lease_seconds()):
        yield
