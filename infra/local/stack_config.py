"""The local stack's settings: one env file with every port, database name and credential.

``load_or_create(state_dir)`` reads ``<state_dir>/stack.env`` or, the first time, writes one with free
loopback ports and fresh random credentials (mode 0600; the state directory is ignored by git, so no
secret is ever committed). Everything that starts a service or talks to one reads this file, so the
servers, the worker and ``mend`` on the command line agree. ``client_environment`` is what a pipeline
process needs: the pipeline's MLflow user, never the admin.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import asdict, dataclass, fields
from pathlib import Path

HOST = "127.0.0.1"  # loopback only: nothing of the stack listens on another interface
ENV_FILE = "stack.env"
# weed derives each gRPC port as HTTP port + 10000; both must be free and below the ephemeral range,
# where the kernel does not hand ports out to outgoing connections.
GRPC_OFFSET = 10000
SEAWEED_COMPONENTS = ("master", "volume", "filer", "s3", "admin")


class StackConfigError(ValueError):
    """The env file is missing a value or holds an invalid one; the message names the variable."""


@dataclass(frozen=True)
class StackConfig:
    """One stack: every field is a ``MEND_STACK_<FIELD>`` line of the env file."""

    state_dir: Path
    pg_host: str
    pg_port: int
    pg_user: str
    mlflow_database: str  # MLflow's tracking and registry store
    mlflow_auth_database: str  # MLflow's users and permissions (the basic-auth app)
    prefect_database: str
    seaweed_master_port: int
    seaweed_volume_port: int
    seaweed_filer_port: int
    seaweed_s3_port: int
    seaweed_admin_port: int
    mlflow_port: int
    prefect_port: int
    s3_access_key: str
    s3_secret_key: str
    bucket: str  # flags, ledger and run artifacts of the pipeline
    artifact_bucket: str  # MLflow's artifact store (the server proxies it; clients never see S3 keys)
    mlflow_admin_user: str
    mlflow_admin_password: str
    pipeline_user: str  # what the worker and `mend` use: owns the experiment and registered model
    pipeline_password: str
    flask_secret: str  # CSRF key of MLflow's basic-auth app

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if item.type == "int" and not 0 < value < 65536:
                raise StackConfigError(f"MEND_STACK_{item.name.upper()}={value}: not a port")
            if item.type == "str" and not value:
                raise StackConfigError(f"MEND_STACK_{item.name.upper()} is empty")

    @property
    def s3_url(self) -> str:
        return f"http://{HOST}:{self.seaweed_s3_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://{HOST}:{self.mlflow_port}"

    @property
    def prefect_api_url(self) -> str:
        return f"http://{HOST}:{self.prefect_port}/api"

    @property
    def store_uri(self) -> str:
        return f"s3://{self.bucket}/store/"

    def database_url(self, database: str, driver: str = "psycopg2") -> str:
        return f"postgresql+{driver}://{self.pg_user}@{self.pg_host}:{self.pg_port}/{database}"

    def s3_environment(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": self.s3_access_key,
            "AWS_SECRET_ACCESS_KEY": self.s3_secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.s3_url,
            "MEND_S3_ENDPOINT_URL": self.s3_url,
            "MLFLOW_S3_ENDPOINT_URL": self.s3_url,
        }

    def client_environment(self) -> dict[str, str]:
        """Environment of a pipeline process (worker, flow runs, `mend`) using this stack."""
        return {
            **self.s3_environment(),
            "PREFECT_API_URL": self.prefect_api_url,
            "MEND_MLFLOW_TRACKING_URI": self.mlflow_url,
            "MLFLOW_TRACKING_USERNAME": self.pipeline_user,
            "MLFLOW_TRACKING_PASSWORD": self.pipeline_password,
            "MEND_STORE_URI": self.store_uri,
            "HF_HUB_OFFLINE": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "GX_ANALYTICS_ENABLED": "false",
        }

    def secrets(self) -> dict[str, str]:
        """Every credential of the stack, by name (a scan for leaks looks for each)."""
        names = ("s3_secret_key", "mlflow_admin_password", "pipeline_password", "flask_secret")
        return {name: getattr(self, name) for name in names}

    def to_env_lines(self) -> list[str]:
        values = asdict(self)
        values.pop("state_dir")
        return [f"MEND_STACK_{name.upper()}={value}" for name, value in values.items()]


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def free_ports(count: int, *, with_grpc: bool = False) -> list[int]:
    """``count`` free loopback ports (and their ``+GRPC_OFFSET`` twins when asked), chosen at random
    below the ephemeral range so parallel stacks and tests do not collide."""
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    high = ephemeral_low - (GRPC_OFFSET if with_grpc else 0)
    chosen: list[int] = []
    rng = secrets.SystemRandom()
    for _ in range(2000):
        port = rng.randrange(10000, high)
        twins = {port, port + GRPC_OFFSET} if with_grpc else {port}
        taken = {used + offset for used in chosen for offset in (0, GRPC_OFFSET)}
        if twins & taken or not all(_port_is_free(candidate) for candidate in twins):
            continue
        chosen.append(port)
        if len(chosen) == count:
            return chosen
    raise RuntimeError(f"could not find {count} free loopback ports")


def generate(state_dir: Path) -> StackConfig:
    """A fresh stack: free ports, new database names and random credentials."""
    token = secrets.token_hex(4)
    seaweed = dict(zip(SEAWEED_COMPONENTS, free_ports(len(SEAWEED_COMPONENTS), with_grpc=True), strict=True))
    mlflow_port, prefect_port = free_ports(2)
    return StackConfig(
        state_dir=state_dir,
        pg_host=os.environ.get("MEND_STACK_PG_HOST", HOST),
        pg_port=int(os.environ.get("MEND_STACK_PG_PORT", "5432")),
        pg_user=os.environ.get("MEND_STACK_PG_USER", "postgres"),
        mlflow_database=f"mend_stack_{token}_mlflow",
        mlflow_auth_database=f"mend_stack_{token}_mlflow_auth",
        prefect_database=f"mend_stack_{token}_prefect",
        **{f"seaweed_{name}_port": port for name, port in seaweed.items()},
        mlflow_port=mlflow_port,
        prefect_port=prefect_port,
        s3_access_key=f"mend{secrets.token_hex(6)}",
        s3_secret_key=secrets.token_urlsafe(24),
        bucket="mend",
        artifact_bucket="mend-mlflow",
        mlflow_admin_user="admin",
        mlflow_admin_password=secrets.token_urlsafe(18),
        pipeline_user="mend-pipeline",
        pipeline_password=secrets.token_urlsafe(18),
        flask_secret=secrets.token_urlsafe(24),
    )


def read_env_file(path: Path) -> StackConfig:
    """Parse ``MEND_STACK_<FIELD>=value`` lines (blank lines and ``#`` comments allowed)."""
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, separator, value = line.partition("=")
        if not separator or not name.startswith("MEND_STACK_"):
            raise StackConfigError(f"{path}:{number}: expected MEND_STACK_<NAME>=value, got {line!r}")
        values[name.removeprefix("MEND_STACK_").lower()] = value.strip()
    known = {item.name: item.type for item in fields(StackConfig) if item.name != "state_dir"}
    if unknown := sorted(set(values) - set(known)):
        raise StackConfigError(f"{path}: unknown settings {['MEND_STACK_' + n.upper() for n in unknown]}")
    if missing := sorted(set(known) - set(values)):
        raise StackConfigError(f"{path}: missing settings {['MEND_STACK_' + n.upper() for n in missing]}")
    parsed: dict[str, object] = {}
    for name, kind in known.items():
        try:
            parsed[name] = int(values[name]) if kind == "int" else values[name]
        except ValueError:
            raise StackConfigError(
                f"{path}: MEND_STACK_{name.upper()}={values[name]!r} is not a number"
            ) from None
    return StackConfig(state_dir=path.parent, **parsed)


def load_or_create(state_dir: Path) -> StackConfig:
    """The stack described by ``<state_dir>/stack.env``, written first when missing."""
    path = state_dir / ENV_FILE
    if path.exists():
        return read_env_file(path)
    state_dir.mkdir(parents=True, exist_ok=True)
    config = generate(state_dir)
    header = (
        "# The local stack (make services-up). Generated; edit ports or credentials before first start.\n"
    )
    # Created 0600 before anything is written: the file holds the stack's credentials.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as stream:
        stream.write(header + "\n".join(config.to_env_lines()) + "\n")
    return config
