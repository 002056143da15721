"""One small interface over where the pipeline keeps its objects: a local directory or an S3 bucket.

``open_store("s3://bucket/prefix/")`` or ``open_store("/var/lib/mend")`` (also ``file://``) returns a
``Store`` whose keys are ``/``-separated paths relative to the store root. Objects are written whole:
the local store writes a temporary file and renames it, so a reader never sees half an object, and
S3 ``put_object`` is atomic by itself. Tasks pass store URIs between each other, never ``Store``
objects, so each task opens its own. This module holds the interface, ``LocalStore``, key rules,
errors and ``S3Settings`` (what ``open_store`` and the pipeline settings take); the boto3 client and
``S3Store`` are in ``tasks.s3_store``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlparse

LOGGER = logging.getLogger(__name__)

AddressingStyle = Literal["path", "virtual", "auto"]
ADDRESSING_STYLES: tuple[str, ...] = ("path", "virtual", "auto")
DEFAULT_REGION = "us-east-1"
# Temporary files of in-flight local writes carry this prefix so listings can leave them out.
TEMP_PREFIX = ".mend-partial-"


class StoreError(RuntimeError):
    """The store could not be used (bad URI, missing bucket, bad key)."""


class MissingObjectError(KeyError):
    """No object at a key. ``uri`` is the full URI that was asked for."""

    def __init__(self, uri: str):
        self.uri = uri
        super().__init__(uri)

    def __str__(self) -> str:  # KeyError would quote the message; say what is missing instead.
        return f"no object at {self.uri}"


@dataclass(frozen=True)
class S3Settings:
    """How to reach an S3-compatible service. ``None`` credentials defer to boto3's usual chain."""

    endpoint_url: str | None = None
    region_name: str = DEFAULT_REGION
    # Path style works with every S3-compatible server (SeaweedFS, MinIO) and with AWS itself.
    addressing_style: AddressingStyle = "path"
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    # botocore "standard" retry mode: exponential backoff on throttling and transient errors.
    max_attempts: int = 5
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.addressing_style not in ADDRESSING_STYLES:
            raise ValueError(
                f"S3Settings.addressing_style: {self.addressing_style!r} is not one of {ADDRESSING_STYLES}"
            )
        if self.max_attempts < 1:
            raise ValueError(f"S3Settings.max_attempts: must be at least 1, got {self.max_attempts}")
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("S3Settings: access_key_id and secret_access_key must be given together")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> S3Settings:
        """Endpoint from ``MEND_S3_ENDPOINT_URL`` or ``AWS_ENDPOINT_URL``; credentials stay with boto3."""
        env = os.environ if environ is None else environ
        return cls(
            endpoint_url=env.get("MEND_S3_ENDPOINT_URL") or env.get("AWS_ENDPOINT_URL") or None,
            region_name=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or DEFAULT_REGION,
            addressing_style=env.get("MEND_S3_ADDRESSING_STYLE", "path"),  # type: ignore[arg-type]
            max_attempts=_whole_number(env, "MEND_S3_MAX_ATTEMPTS", cls.max_attempts),
        )


def _whole_number(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected a whole number") from None


def check_key(key: str) -> str:
    """Keys are relative ``/`` paths without empty, ``.`` or ``..`` parts, so they map 1:1 to files."""
    if not isinstance(key, str) or not key:
        raise StoreError(f"object key must be a non-empty string, got {key!r}")
    parts = key.split("/")
    if key.startswith("/") or any(part in ("", ".", "..") for part in parts) or "\\" in key:
        raise StoreError(f"object key {key!r} must be a relative path without empty, '.' or '..' parts")
    if parts[-1].startswith(TEMP_PREFIX):
        raise StoreError(f"object key {key!r}: names starting with {TEMP_PREFIX!r} are reserved")
    return key


def is_prefix(key: str) -> bool:
    """``""`` or a valid key followed by ``/``: names a "directory" rather than an object."""
    if key == "":
        return True
    if key.endswith("/"):
        check_key(key[:-1])
        return True
    return False


class Store(ABC):
    """Objects under one root. Subclasses supply bytes and file transfer; text and JSON build on them."""

    @abstractmethod
    def url(self, key: str = "") -> str:
        """The full URI of ``key``, or of a prefix (``""`` for the root, ``"flags/"``)."""

    @abstractmethod
    def read_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys that start with ``prefix`` (a plain string prefix, as in S3)."""

    @abstractmethod
    def download(self, key: str, local_path: str | Path) -> Path: ...

    @abstractmethod
    def upload(self, local_path: str | Path, key: str) -> None: ...

    def read_many(self, keys: Iterable[str], max_workers: int = 8) -> list[bytes]:
        """Objects in the order of ``keys``; subclasses may fetch them concurrently."""
        del max_workers
        return [self.read_bytes(key) for key in keys]

    def read_text(self, key: str) -> str:
        return self.read_bytes(key).decode("utf-8")

    def write_text(self, key: str, text: str) -> None:
        self.write_bytes(key, text.encode("utf-8"))

    def read_json(self, key: str) -> Any:
        try:
            return json.loads(self.read_bytes(key))
        except json.JSONDecodeError as error:
            raise StoreError(f"{self.url(key)}: not valid JSON: {error}") from error

    def write_json(self, key: str, value: Any) -> None:
        # allow_nan=False: NaN/Infinity are not JSON and other readers would reject the object.
        text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
        self.write_text(key, text + "\n")


class LocalStore(Store):
    """A directory on a local (or mounted) file system; the embedded default."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    def url(self, key: str = "") -> str:
        if is_prefix(key):
            return self.root.joinpath(*key.split("/")[:-1]).as_uri().rstrip("/") + "/"
        return self.path(key).as_uri()

    def read_bytes(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise MissingObjectError(self.url(key)) from None

    def write_bytes(self, key: str, data: bytes) -> None:
        with self._replacing(key) as temp, open(temp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())  # the rename must not publish an object still in the page cache
        LOGGER.debug("wrote %d bytes to %s", len(data), self.url(key))

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        # Walk only the deepest directory the prefix names in full, then filter by the string prefix.
        directory = (
            self.root.joinpath(*check_key(prefix.rsplit("/", 1)[0]).split("/"))
            if "/" in prefix
            else self.root
        )
        if not directory.is_dir():
            return []
        keys = (
            (Path(dirpath) / name).relative_to(self.root).as_posix()
            for dirpath, _dirnames, filenames in os.walk(directory)
            for name in filenames
            if not name.startswith(TEMP_PREFIX)
        )
        return sorted(key for key in keys if key.startswith(prefix))

    def download(self, key: str, local_path: str | Path) -> Path:
        source, destination = self.path(key), Path(local_path)
        if not source.is_file():
            raise MissingObjectError(self.url(key))
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)
        return destination

    def upload(self, local_path: str | Path, key: str) -> None:
        with self._replacing(key) as temp:
            shutil.copyfile(local_path, temp)
        LOGGER.info("uploaded %s to %s", local_path, self.url(key))

    @contextmanager
    def _replacing(self, key: str) -> Iterator[Path]:
        """A temporary path that replaces ``key``'s file when the block succeeds, and is removed if not."""
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Same directory as the target so os.replace is a rename within one file system.
        temp = target.with_name(f"{TEMP_PREFIX}{uuid.uuid4().hex}-{target.name}")
        try:
            yield temp
            os.replace(temp, target)
        finally:
            temp.unlink(missing_ok=True)


def open_store(uri: str | Path, *, s3_settings: S3Settings | None = None, s3_client: Any = None) -> Store:
    """The store at ``uri``: ``s3://bucket/prefix/``, ``file:///path`` or a plain directory path.

    S3 settings come from ``s3_settings``, else from the environment (``S3Settings.from_env``);
    ``s3_client`` lets a caller share one client between stores.
    """
    text = str(uri)
    parsed = urlparse(text)
    if parsed.scheme == "s3":
        # Imported here: tasks.s3_store builds on this module, and local-only use never needs it.
        from tasks.s3_store import S3Store, make_s3_client

        if not parsed.netloc:
            raise StoreError(f"{text!r}: an S3 URI needs a bucket, as in s3://bucket/prefix/")
        client = s3_client or make_s3_client(s3_settings or S3Settings.from_env())
        return S3Store(parsed.netloc, parsed.path, client=client)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise StoreError(f"{text!r}: file URIs must name a local path (file:///path)")
        return LocalStore(unquote(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:  # one letter would be a Windows drive, not a scheme
        raise StoreError(
            f"{text!r}: unsupported store scheme {parsed.scheme!r}; use s3://, file:// or a path"
        )
    return LocalStore(text)
