"""The store, flag log and ledger contracts on a real SeaweedFS S3 server, plus S3-only failure modes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tasks.flags import append_flags, read_flag_log
from tasks.s3_store import S3Store
from tasks.storage import StoreError, open_store
from tests.integration.seaweed import COMPONENTS, GRPC_OFFSET, SeaweedS3, free_http_ports, seaweed_s3_server
from tests.tasks.test_flags import FlagLogContract, make_flag
from tests.tasks.test_ledger import LedgerContract
from tests.tasks.test_storage import StoreContract

pytestmark = pytest.mark.integration


class TestS3Store(StoreContract):
    @pytest.fixture
    def store(self, s3_store: S3Store) -> S3Store:
        return s3_store


class TestS3FlagLog(FlagLogContract):
    @pytest.fixture
    def store(self, s3_store: S3Store) -> S3Store:
        return s3_store


class TestS3Ledger(LedgerContract):
    @pytest.fixture
    def store(self, s3_store: S3Store) -> S3Store:
        return s3_store


def test_server_started_and_reports_its_start_time(s3_server: SeaweedS3) -> None:
    assert s3_server.endpoint_url.startswith("http://127.0.0.1:")
    assert s3_server.startup_seconds > 0


def test_prefixes_keep_stores_apart(s3_prefix_uri: str, s3_client: Any) -> None:
    first = open_store(f"{s3_prefix_uri}one", s3_client=s3_client)
    second = open_store(f"{s3_prefix_uri}one-more/", s3_client=s3_client)
    append_flags(first, [make_flag("a")])
    append_flags(second, [make_flag("b")])
    assert [flag.flag_id for flag in read_flag_log(first).flags] == ["a"]
    assert [flag.flag_id for flag in read_flag_log(second).flags] == ["b"]
    parent = open_store(s3_prefix_uri, s3_client=s3_client).list()
    assert parent == sorted(
        ["one/" + key for key in first.list()] + ["one-more/" + key for key in second.list()]
    )


def test_a_fresh_bucket_starts_empty(s3_server: SeaweedS3, s3_bucket: str) -> None:
    assert open_store(f"s3://{s3_bucket}", s3_settings=s3_server.settings()).list() == []


def test_settings_from_the_environment(
    s3_server: SeaweedS3, s3_prefix_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # MEND_S3_ENDPOINT_URL alone must be enough
    store = open_store(s3_prefix_uri)
    store.write_text("hello.txt", "hi")
    assert store.read_text("hello.txt") == "hi"


def test_missing_bucket_is_named(s3_server: SeaweedS3) -> None:
    store = open_store("s3://no-such-bucket-here/x/", s3_settings=s3_server.settings())
    with pytest.raises(StoreError, match="no-such-bucket-here"):
        store.list()
    with pytest.raises(StoreError, match="s3://no-such-bucket-here/x/key: bucket"):
        store.read_bytes("key")


def test_wrong_credentials_are_an_error_not_a_missing_key(s3_server: SeaweedS3, s3_prefix_uri: str) -> None:
    store = open_store(s3_prefix_uri, s3_settings=s3_server.settings(secret_access_key="wrong"))
    with pytest.raises(StoreError, match=r"SignatureDoesNotMatch|AccessDenied"):
        store.read_bytes("anything")


def test_server_process_is_gone_after_the_context(tmp_path: Path) -> None:
    with seaweed_s3_server(tmp_path) as server:
        os.kill(server.pid, 0)  # running: signal 0 only checks the process exists
    with pytest.raises(ProcessLookupError):
        os.kill(server.pid, 0)


def test_a_server_that_cannot_start_reports_its_log(tmp_path: Path) -> None:
    # A later -dir overrides ours; weed cannot create a directory under /dev/null and exits.
    expected = r"weed exited with code \d+ while starting; log tail:\n(.|\n)*/dev/null"
    with (
        pytest.raises(RuntimeError, match=expected),
        seaweed_s3_server(tmp_path, extra_args=["-dir=/dev/null/x"]),
    ):
        pass


def test_server_ports_stay_below_the_ephemeral_range() -> None:
    # An outgoing connection can take an ephemeral port between our check and weed's bind.
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in free_http_ports(len(COMPONENTS)):
        assert port + GRPC_OFFSET < ephemeral_low
