"""S3 unreachable during extract: the task retries with growing pauses, then the run fails with an error
naming the endpoint, and every flag is still pending."""

from __future__ import annotations

import asyncio
import socket

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_server")]


def _closed_port() -> int:
    """A loopback port nothing listens on (connections are refused: the S3 server is gone)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _task_run_counts(flow_run_id) -> list[int]:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def read():
        async with get_client() as client:
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            return [run.run_count for run in runs]

    return asyncio.run(read())


def test_extract_retries_with_backoff_then_fails_and_leaves_every_flag_pending(
    make_settings, s3_server, s3_prefix_uri, monkeypatch
):
    from prefect import flow

    from tasks.extract import EXTRACT_RETRY_DELAYS, extract_task
    from tasks.flags import Flag, append_flags, read_flag_log
    from tasks.ledger import Ledger
    from tasks.storage import open_store

    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    store = open_store(s3_prefix_uri)
    flags = [
        Flag.create(model_name="mend-fault", model_version="1", prompt=f"The capital of country {n} is",
                    prediction="Paris", correction=f"City {n}", reason="wrong", reporter="fault-test")
        for n in range(3)
    ]  # fmt: skip
    append_flags(store, flags)

    dead = f"http://127.0.0.1:{_closed_port()}"
    for name in ("MEND_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL"):
        monkeypatch.setenv(name, dead)
    monkeypatch.setenv("MEND_S3_MAX_ATTEMPTS", "2")  # botocore's own retries, kept short here
    settings = make_settings(store_uri=s3_prefix_uri, registered_model="mend-fault")
    assert sorted(EXTRACT_RETRY_DELAYS) == EXTRACT_RETRY_DELAYS and len(set(EXTRACT_RETRY_DELAYS)) == 3
    # The production schedule scaled down 50x: the same backoff, in seconds a test can wait.
    quick = extract_task.with_options(retry_delay_seconds=[delay / 50 for delay in EXTRACT_RETRY_DELAYS])

    @flow(name="extract-with-s3-down")
    def extract_only():
        return quick(settings, "run-s3-down", "mend-fault")

    state = extract_only(return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match=r"127\.0\.0\.1") as raised:
        state.result()
    print("observed:", type(raised.value).__name__, str(raised.value)[:300])
    # One first attempt and three retries, each of which found the store down.
    assert _task_run_counts(state.state_details.flow_run_id) == [1 + len(EXTRACT_RETRY_DELAYS)]

    monkeypatch.setenv("MEND_S3_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    ledger = Ledger(open_store(s3_prefix_uri))
    assert ledger.states() == {}
    log = read_flag_log(open_store(s3_prefix_uri))
    assert {flag.flag_id for flag in ledger.unconsumed(log.flags)} == {flag.flag_id for flag in flags}
