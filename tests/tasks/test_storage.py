"""Store behaviour. ``StoreContract`` runs here on a local directory and, in
``tests/integration/test_s3_store.py``, on a real SeaweedFS S3 server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tasks.s3_store import S3Store
from tasks.storage import (
    TEMP_PREFIX,
    LocalStore,
    MissingObjectError,
    S3Settings,
    Store,
    StoreError,
    open_store,
)

LARGE_SIZE = 12 * 1024 * 1024  # above boto3's 8 MiB multipart threshold and SeaweedFS's 4 MiB chunks


class StoreContract:
    """Behaviour every store must have; subclasses provide a ``store`` fixture."""

    def test_bytes_round_trip_and_overwrite(self, store: Store) -> None:
        store.write_bytes("a/b/c.bin", b"\x00first")
        assert store.read_bytes("a/b/c.bin") == b"\x00first"
        store.write_bytes("a/b/c.bin", b"second")
        assert store.read_bytes("a/b/c.bin") == b"second"

    def test_text_and_json_round_trip(self, store: Store) -> None:
        store.write_text("notes/é.txt", "Grüße, 世界\n")
        store.write_json("config.json", {"rate": 0.5, "names": ["Rowling", "Tolkien"], "nested": {"k": None}})
        assert store.read_text("notes/é.txt") == "Grüße, 世界\n"
        assert store.read_json("config.json") == {
            "rate": 0.5,
            "names": ["Rowling", "Tolkien"],
            "nested": {"k": None},
        }

    def test_exists(self, store: Store) -> None:
        store.write_text("present.txt", "x")
        assert store.exists("present.txt")
        assert not store.exists("absent.txt")
        assert not store.exists("present")  # a prefix of a key is not a key

    def test_missing_key_names_the_uri(self, store: Store) -> None:
        with pytest.raises(MissingObjectError) as caught:
            store.read_bytes("nowhere/nothing.json")
        assert isinstance(caught.value, KeyError)
        assert caught.value.uri == store.url("nowhere/nothing.json")
        assert str(caught.value) == f"no object at {store.url('nowhere/nothing.json')}"
        with pytest.raises(MissingObjectError):
            store.read_json("nothing.json")

    def test_list_is_sorted_relative_and_filters_by_string_prefix(self, store: Store) -> None:
        assert store.list() == []
        keys = ["flags/2025-01-02/b.jsonl", "flags/2025-01-01/a.jsonl", "flagship.txt", "ledger/x.json", "z"]
        for key in keys:
            store.write_text(key, key)
        assert store.list() == sorted(keys)
        assert store.list("flags/") == ["flags/2025-01-01/a.jsonl", "flags/2025-01-02/b.jsonl"]
        assert store.list("flag") == ["flags/2025-01-01/a.jsonl", "flags/2025-01-02/b.jsonl", "flagship.txt"]
        assert store.list("flags/2025-01-02/") == ["flags/2025-01-02/b.jsonl"]
        assert store.list("missing/") == []

    def test_list_pages_through_many_keys(self, store: Store) -> None:
        keys = [f"many/{index:03d}.txt" for index in range(11)]
        for key in reversed(keys):
            store.write_text(key, "x")
        assert store.list("many/") == keys

    def test_read_many_keeps_order(self, store: Store) -> None:
        for index in range(5):
            store.write_text(f"part/{index}", str(index))
        keys = [f"part/{index}" for index in (3, 0, 4, 1, 2)]
        assert [data.decode() for data in store.read_many(keys)] == ["3", "0", "4", "1", "2"]

    def test_url_names_the_key_or_prefix(self, store: Store) -> None:
        url = store.url("dir/file.txt")
        assert url.startswith(("s3://", "file://")) and url.endswith("/dir/file.txt")
        assert store.url("dir/") == url.removesuffix("file.txt")
        assert store.url() == url.removesuffix("dir/file.txt")

    @pytest.mark.parametrize("key", ["", "/abs", "a//b", "a/../b", "./a", "a/", f"a/{TEMP_PREFIX}x"])
    def test_bad_keys_are_refused(self, store: Store, key: str) -> None:
        with pytest.raises(StoreError, match="key"):
            store.write_text(key, "x")

    def test_invalid_json_is_an_error_naming_the_object(self, store: Store) -> None:
        store.write_text("broken.json", "{not json")
        with pytest.raises(StoreError, match=r"broken\.json: not valid JSON"):
            store.read_json("broken.json")

    def test_large_upload_and_download(self, store: Store, tmp_path: Path) -> None:
        source = tmp_path / "large.bin"
        payload = os.urandom(LARGE_SIZE)
        source.write_bytes(payload)
        store.upload(source, "models/large.bin")
        assert store.exists("models/large.bin")
        target = store.download("models/large.bin", tmp_path / "out" / "large.bin")
        assert target.read_bytes() == payload
        with pytest.raises(MissingObjectError):
            store.download("models/absent.bin", tmp_path / "out" / "absent.bin")


class TestLocalStore(StoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> LocalStore:
        return LocalStore(tmp_path / "store")

    def test_writes_leave_no_temporary_files(self, store: LocalStore, tmp_path: Path) -> None:
        store.write_text("a/b.txt", "x")
        store.upload(__file__, "a/c.py")
        assert sorted(path.name for path in store.root.rglob("*")) == ["a", "b.txt", "c.py"]

    def test_listing_skips_a_write_in_flight(self, store: LocalStore) -> None:
        store.write_text("a/done.txt", "x")
        (store.root / "a" / f"{TEMP_PREFIX}123-next.txt").write_text("half")
        assert store.list() == ["a/done.txt"]

    def test_failed_write_keeps_the_old_object(self, store: LocalStore) -> None:
        store.write_text("a.json", "old")
        with pytest.raises(TypeError):
            store.write_bytes("a.json", "not bytes")  # type: ignore[arg-type]
        assert store.read_text("a.json") == "old"
        assert store.list() == ["a.json"]


def test_open_store_local_forms(tmp_path: Path) -> None:
    for uri in (str(tmp_path), tmp_path, tmp_path.as_uri(), f"file://localhost{tmp_path}"):
        store = open_store(uri)
        assert isinstance(store, LocalStore) and store.root == tmp_path.resolve()
    assert open_store(tmp_path).url("k/v.txt") == (tmp_path / "k" / "v.txt").as_uri()


def test_open_store_s3_uri_splits_bucket_and_prefix() -> None:
    settings = S3Settings(endpoint_url="http://127.0.0.1:1", access_key_id="key", secret_access_key="secret")
    store = open_store("s3://my-bucket/some/prefix", s3_settings=settings)
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix) == ("my-bucket", "some/prefix/")
    assert store.url("flags/x.jsonl") == "s3://my-bucket/some/prefix/flags/x.jsonl"
    assert open_store("s3://my-bucket", s3_client=store.client).url("k") == "s3://my-bucket/k"


@pytest.mark.parametrize("uri", ["s3://", "s3:///prefix", "gs://bucket/x", "file://otherhost/x"])
def test_open_store_refuses_unusable_uris(uri: str) -> None:
    with pytest.raises(StoreError):
        open_store(uri, s3_settings=S3Settings(endpoint_url="http://127.0.0.1:1"))


def test_s3_settings_from_env() -> None:
    settings = S3Settings.from_env(
        {
            "MEND_S3_ENDPOINT_URL": "http://mend:8333",
            "AWS_ENDPOINT_URL": "http://aws",
            "AWS_REGION": "eu-west-1",
        }
    )
    assert (settings.endpoint_url, settings.region_name, settings.addressing_style) == (
        "http://mend:8333",
        "eu-west-1",
        "path",
    )
    fallback = S3Settings.from_env({"AWS_ENDPOINT_URL": "http://aws", "MEND_S3_ADDRESSING_STYLE": "virtual"})
    assert (fallback.endpoint_url, fallback.region_name, fallback.addressing_style) == (
        "http://aws",
        "us-east-1",
        "virtual",
    )
    assert S3Settings.from_env({}).endpoint_url is None


def test_s3_settings_validation_and_secret_not_in_repr() -> None:
    with pytest.raises(ValueError, match="addressing_style"):
        S3Settings.from_env({"MEND_S3_ADDRESSING_STYLE": "sideways"})
    with pytest.raises(ValueError, match="together"):
        S3Settings(access_key_id="only-the-key")
    assert "hunter2" not in repr(S3Settings(access_key_id="key", secret_access_key="hunter2"))
