"""The ledger lock: fix and promotion runs read, check and then write the flag ledger (and move
registry aliases), so at most one of them may run at a time, across every deployment and worker."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

LEDGER_LIMIT = "mend-ledger"


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
    with concurrency(LEDGER_LIMIT, occupy=1, strict=True):
        yield
