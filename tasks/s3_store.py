"""The S3 side of the object store: a boto3 client built from ``S3Settings``, and ``S3Store``.

``S3Store`` keeps objects under ``s3://bucket/prefix/`` behind the ``Store`` interface of
``tasks.storage``; ``put_object`` is atomic by itself, and boto3 handles retries, multipart transfers
and pagination. boto3 is imported only inside ``make_s3_client``, so importing this module (or using
a local store) never loads it. Callers normally get an ``S3Store`` from ``tasks.storage.open_store``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tasks.storage import MissingObjectError, S3Settings, Store, StoreError, check_key, is_prefix

LOGGER = logging.getLogger(__name__)


def make_s3_client(settings: S3Settings) -> Any:
    """A boto3 S3 client for ``settings`` (boto3 imported here so local-only use never loads it)."""
    import boto3
    from botocore.config import Config

    config = Config(
        region_name=settings.region_name,
        s3={"addressing_style": settings.addressing_style},
        retries={"mode": "standard", "max_attempts": settings.max_attempts},
        connect_timeout=settings.connect_timeout_s,
        read_timeout=settings.read_timeout_s,
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=settings.endpoint_url,
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=settings.secret_access_key,
        aws_session_token=settings.session_token,
        config=config,
    )


class S3Store(Store):
    """Objects under ``s3://bucket/prefix/``; boto3 handles retries, multipart and pagination."""

    def __init__(self, bucket: str, prefix: str = "", *, client: Any, list_page_size: int = 1000):
        if not bucket:
            raise StoreError("S3Store: bucket name is empty")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client = client
        self.list_page_size = list_page_size

    def __repr__(self) -> str:
        return f"S3Store('s3://{self.bucket}/{self.prefix}')"

    def object_key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def url(self, key: str = "") -> str:
        return (
            f"s3://{self.bucket}/{self.prefix}{key}"
            if is_prefix(key)
            else f"s3://{self.bucket}/{self.object_key(key)}"
        )

    def read_bytes(self, key: str) -> bytes:
        with self._errors(key):
            return self.client.get_object(Bucket=self.bucket, Key=self.object_key(key))["Body"].read()

    def read_many(self, keys: Iterable[str], max_workers: int = 8) -> list[bytes]:
        # Each GET is a round trip; boto3 clients are thread-safe, so overlap them.
        keys = list(keys)
        if len(keys) <= 1:
            return [self.read_bytes(key) for key in keys]
        with ThreadPoolExecutor(max_workers=max_workers) as pool:
            return list(pool.map(self.read_bytes, keys))

    def write_bytes(self, key: str, data: bytes) -> None:
        with self._errors(key):
            self.client.put_object(Bucket=self.bucket, Key=self.object_key(key), Body=data)
        LOGGER.debug("wrote %d bytes to %s", len(data), self.url(key))

    def exists(self, key: str) -> bool:
        try:
            with self._errors(key):
                self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))
        except MissingObjectError:
            return False
        return True

    def list(self, prefix: str = "") -> list[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self.bucket,
            Prefix=self.prefix + prefix,
            PaginationConfig={"PageSize": self.list_page_size},
        )
        with self._errors(prefix):
            keys = [item["Key"][len(self.prefix) :] for page in pages for item in page.get("Contents", [])]
        return sorted(keys)

    def download(self, key: str, local_path: str | Path) -> Path:
        destination = Path(local_path)
        destination.parent.mkdir(parents=True, exist_ok=True)
        with self._errors(key):  # download_file writes a temporary file and renames it when complete
            self.client.download_file(self.bucket, self.object_key(key), str(destination))
        return destination

    def upload(self, local_path: str | Path, key: str) -> None:
        with self._errors(key):  # upload_file switches to a multipart upload for large files
            self.client.upload_file(str(local_path), self.bucket, self.object_key(key))
        LOGGER.info("uploaded %s to %s", local_path, self.url(key))

    @contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        """botocore errors as ``MissingObjectError`` / ``StoreError`` naming the URI."""
        try:
            yield
        except Exception as error:
            response = getattr(error, "response", None)
            if not isinstance(response, dict):  # not an S3 answer (e.g. no connection): as it is
                raise
            code = str(response.get("Error", {}).get("Code", ""))
            uri = f"s3://{self.bucket}/{self.prefix}{key}"
            if code in ("NoSuchKey", "404", "NotFound"):
                raise MissingObjectError(uri) from error
            if code == "NoSuchBucket":
                raise StoreError(f"{uri}: bucket {self.bucket!r} does not exist") from error
            message = response.get("Error", {}).get("Message", error)
            raise StoreError(f"{uri}: S3 error {code}: {message}") from error
