"""Session-scoped real servers for integration tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tasks.s3_store import S3Store
from tasks.storage import open_store
from tests.integration.seaweed import SeaweedS3, seaweed_s3_server
from tests.integration.stack_fixtures import local_stack, stack_fix_run  # noqa: F401  (fixtures)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """One SeaweedFS S3 server for the whole session (starting it takes a few seconds)."""
    with seaweed_s3_server(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture(scope="session")
def s3_client(s3_server: SeaweedS3) -> Any:
    """One boto3 client for the session: building a client costs a noticeable fraction of a second."""
    return s3_server.client()


@pytest.fixture(scope="session")
def s3_shared_bucket(s3_server: SeaweedS3) -> str:
    """One bucket for the session; tests keep apart by prefix (SeaweedFS makes each bucket a new
    collection with its own volumes, so a bucket per test costs about a second)."""
    return s3_server.create_bucket("shared")


@pytest.fixture
def s3_bucket(s3_server: SeaweedS3) -> str:
    """A fresh, empty bucket, for the few tests that need a whole bucket to themselves."""
    return s3_server.create_bucket()


@pytest.fixture
def s3_prefix_uri(s3_shared_bucket: str) -> str:
    """``s3://shared-bucket/<unique>/``: a fresh, empty place for one test."""
    return f"s3://{s3_shared_bucket}/{uuid.uuid4().hex[:12]}/"


@pytest.fixture
def s3_store(s3_prefix_uri: str, s3_client: Any) -> S3Store:
    """An ``S3Store`` at a fresh prefix; a small page size exercises list pagination."""
    store = open_store(s3_prefix_uri, s3_client=s3_client)
    assert isinstance(store, S3Store)
    store.list_page_size = 3
    return store
