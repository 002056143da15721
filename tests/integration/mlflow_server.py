"""A real ``mlflow server`` on a fresh PostgreSQL database, for integration tests.

``mlflow_server(work_dir)`` creates database ``mend_test_<random>`` in the local PostgreSQL (trust
auth), starts the server on a free port with artifacts proxied to a local directory, waits until
``/health`` answers, and on exit stops the server's process group and drops the database.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

LOGGER = logging.getLogger(__name__)

PG_HOST = os.environ.get("MEND_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("MEND_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("MEND_TEST_PG_USER", "postgres")
# An existing database to connect to while creating and dropping the test database.
PG_ADMIN_DATABASE = os.environ.get("MEND_TEST_PG_ADMIN_DB", "postgres")


class ServerStartError(RuntimeError):
    """The MLflow server exited or did not become healthy in time."""


@dataclass(frozen=True)
class MlflowServer:
    tracking_uri: str
    database: str
    artifact_dir: Path
    log_path: Path
    start_seconds: float  # from launch until /health answered


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _admin_execute(statement: str) -> None:
    import psycopg2

    connection = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=PG_ADMIN_DATABASE)
    try:
        connection.autocommit = True  # CREATE/DROP DATABASE cannot run inside a transaction
        with connection.cursor() as cursor:
            cursor.execute(statement)
    finally:
        connection.close()


@contextmanager
def _temporary_database() -> Iterator[str]:
    name = f"mend_test_{secrets.token_hex(4)}"
    _admin_execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        # FORCE ends connections a killed server may have left behind (PostgreSQL 13+).
        _admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _log_tail(path: Path, characters: int = 3000) -> str:
    return path.read_text(errors="replace")[-characters:] if path.exists() else "(no log)"


def _wait_healthy(process: subprocess.Popen, url: str, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerStartError(f"mlflow server exited with {process.returncode}:\n{_log_tail(log_path)}")
        if _healthy(url):
            return
        time.sleep(0.25)
    raise ServerStartError(f"mlflow server not healthy after {timeout:.0f}s:\n{_log_tail(log_path)}")


def _stop(process: subprocess.Popen) -> None:
    """Stop the server and the workers it spawned (they share its new process group)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):  # workers may outlive the parent for a moment
        os.killpg(process.pid, signal.SIGKILL)


def _server_command(database: str, artifact_dir: Path, port: int) -> list[str]:
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    # psycopg2 is the driver installed here; plain postgresql:// would pick psycopg 3.
    backend = f"postgresql+psycopg2://{PG_USER}@{PG_HOST}:{PG_PORT}/{database}"
    return [
        str(mlflow_cli), "server",
        "--backend-store-uri", backend,
        "--artifacts-destination", str(artifact_dir),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip


@contextmanager
def mlflow_server(work_dir: Path, *, startup_timeout: float = 300.0) -> Iterator[MlflowServer]:
    """Run an MLflow tracking server on PostgreSQL for the duration of the block."""
    artifact_dir = work_dir / "mlflow-artifacts"
    artifact_dir.mkdir(parents=True, exist_ok=True)
    log_path = work_dir / "mlflow-server.log"
    environment = os.environ | {"MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}
    environment.pop("MLFLOW_TRACKING_URI", None)
    with _temporary_database() as database, log_path.open("wb") as log:
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        started = time.monotonic()
        process = subprocess.Popen(
            _server_command(database, artifact_dir, port),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
            cwd=work_dir,
            start_new_session=True,
        )
        try:
            _wait_healthy(process, url, log_path, startup_timeout)
            elapsed = time.monotonic() - started
            LOGGER.info("mlflow server on %s (database %s) healthy after %.1fs", url, database, elapsed)
            yield MlflowServer(url, database, artifact_dir, log_path, elapsed)
        finally:
            _stop(process)
