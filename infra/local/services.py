"""How each service of the local stack is started and known to be ready.

SeaweedFS (S3 with an identity file: requests without a known key are refused), an MLflow tracking
server on PostgreSQL with its artifacts in SeaweedFS and the basic-auth app on, a Prefect server on
PostgreSQL, and a Prefect process worker on the ``mend-cpu`` pool. Every command binds 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path

from infra.local import processes
from infra.local.processes import Service
from infra.local.stack_config import HOST, StackConfig

WORK_POOLS = ("mend-cpu", "mend-gpu")  # the worker polls mend-cpu; GPU machines poll mend-gpu
WORKER_NAME = "mend-local-worker"


def _executable(name: str) -> str:
    """A console script of this interpreter's environment (the venv), else one on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"`{name}` not found beside {sys.executable} or on PATH (run `make setup`)")
    return found


def _private_file(path: Path, text: str) -> None:
    """Write ``text`` to a file only its owner can read (it holds credentials)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as stream:
        stream.write(text)


def base_environment() -> dict[str, str]:
    """The caller's environment without anything that would point a service elsewhere."""
    dropped = ("AWS_", "S3_", "MLFLOW_TRACKING_", "MLFLOW_REGISTRY_", "PREFECT_", "MEND_MLFLOW", "MEND_STORE")
    environment = {name: value for name, value in os.environ.items() if not name.startswith(dropped)}
    environment.update(PYTHONUNBUFFERED="1", MLFLOW_DISABLE_TELEMETRY="true", HF_HUB_OFFLINE="1",
                       PREFECT_SERVER_ANALYTICS_ENABLED="false", GX_ANALYTICS_ENABLED="false")  # fmt: skip
    return environment


# SeaweedFS ---------------------------------------------------------------------------------------


def s3_client(config: StackConfig, **overrides: str):
    import boto3
    from botocore.config import Config

    credentials = {"aws_access_key_id": config.s3_access_key, "aws_secret_access_key": config.s3_secret_key}
    return boto3.client(
        "s3",
        endpoint_url=config.s3_url,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10,
                      s3={"addressing_style": "path"}),
        **(credentials | overrides),
    )  # fmt: skip


def start_seaweed(config: StackConfig, service: Service) -> None:
    directory = config.state_dir / "seaweed"
    (directory / "data").mkdir(parents=True, exist_ok=True)
    identity = {"name": "mend-pipeline", "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                "credentials": [{"accessKey": config.s3_access_key, "secretKey": config.s3_secret_key}]}  # fmt: skip
    # Only this identity exists: SeaweedFS refuses anonymous requests once an identity file is given.
    _private_file(directory / "s3.json", json.dumps({"identities": [identity]}))
    ports = {"master": config.seaweed_master_port, "volume": config.seaweed_volume_port,
             "filer": config.seaweed_filer_port, "s3": config.seaweed_s3_port, "admin": config.seaweed_admin_port}  # fmt: skip
    command = [_executable("weed"), "-logtostderr", "mini", f"-dir={directory / 'data'}", f"-ip={HOST}",
               f"-ip.bind={HOST}", f"-s3.config={directory / 's3.json'}", "-webdav=false", "-admin.ui=false",
               "-master.telemetry=false", "-s3.port.iceberg=0", "-s3.port.lance=0", "-volume.preStopSeconds=0",
               *(f"-{name}.port={port}" for name, port in ports.items())]  # fmt: skip
    if len(str(directory)) < 80:  # unix sockets otherwise default to /tmp
        command += [
            f"-s3.localSocket={directory / 's3.sock'}",
            f"-filer.localSocket={directory / 'filer.sock'}",
        ]
    processes.start(service, command, base_environment(), directory)
    processes.wait_ready(service, lambda: _buckets_ready(config), timeout_s=300)


def _buckets_ready(config: StackConfig) -> bool:
    """Ready means writable: both buckets exist and accept an object."""
    try:
        client = s3_client(config)
        existing = {bucket["Name"] for bucket in client.list_buckets().get("Buckets", [])}
        for bucket in (config.bucket, config.artifact_bucket):
            if bucket not in existing:
                client.create_bucket(Bucket=bucket)
        client.put_object(Bucket=config.bucket, Key="stack/ready", Body=b"ok")
        return True
    except Exception:  # any failure means "not yet"; wait_ready bounds the wait
        return False


# MLflow ------------------------------------------------------------------------------------------


def _auth_header(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def start_mlflow(config: StackConfig, service: Service) -> None:
    directory = config.state_dir / "mlflow"
    auth_ini = directory / "basic_auth.ini"
    # READ for every signed-in user; a user edits only what it created or was granted. The admin
    # password is used once, when the auth app creates the admin in an empty user store.
    _private_file(auth_ini, "\n".join([
        "[mlflow]", "default_permission = READ",
        f"database_uri = {config.database_url(config.mlflow_auth_database)}",
        f"admin_username = {config.mlflow_admin_user}", f"admin_password = {config.mlflow_admin_password}",
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
        # Each request otherwise re-hashes its password (PBKDF2): a fix run makes hundreds. One server
        # worker, so a changed password is seen at once on it; only successful checks are cached.
        "auth_cache_ttl_seconds = 60", "",
    ]))  # fmt: skip
    environment = base_environment() | config.s3_environment() | {
        # The server's job runner (GenAI evaluation jobs, seven consumer processes) has no work here.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_AUTH_CONFIG_PATH": str(auth_ini), "MLFLOW_FLASK_SERVER_SECRET_KEY": config.flask_secret}  # fmt: skip
    command = [_executable("mlflow"), "server", "--app-name", "basic-auth",
               "--backend-store-uri", config.database_url(config.mlflow_database),
               "--artifacts-destination", f"s3://{config.artifact_bucket}/artifacts",
               "--host", HOST, "--port", str(config.mlflow_port), "--workers", "1"]  # fmt: skip
    processes.start(service, command, environment, directory)
    # With basic auth on, even /health wants credentials.
    admin = _auth_header(config.mlflow_admin_user, config.mlflow_admin_password)
    processes.wait_ready(
        service, lambda: processes.http_ok(f"{config.mlflow_url}/health", admin), timeout_s=900
    )


def ensure_mlflow_user(config: StackConfig, user: str, password: str, attempts: int = 3) -> None:
    """Create ``user`` through the auth API as the admin; an existing user is left as it is.

    Hashing a password is deliberately slow, and on a busy machine an answer can take longer than the
    timeout; the request is then repeated, and a user the timed-out request did create counts."""
    request = urllib.request.Request(
        f"{config.mlflow_url}/api/2.0/mlflow/users/create",
        data=json.dumps({"username": user, "password": password}).encode(),
        headers={"Content-Type": "application/json",
                 **_auth_header(config.mlflow_admin_user, config.mlflow_admin_password)},
        method="POST",
    )  # fmt: skip
    for attempt in range(1, attempts + 1):
        try:
            with urllib.request.urlopen(request, timeout=120):
                return
        except urllib.error.HTTPError as error:
            body = error.read().decode(errors="replace")
            if "RESOURCE_ALREADY_EXISTS" in body:
                return
            raise RuntimeError(
                f"creating MLflow user {user!r} failed: HTTP {error.code}: {body[:300]}"
            ) from None
        except (TimeoutError, urllib.error.URLError) as error:
            if attempt == attempts:
                raise RuntimeError(f"creating MLflow user {user!r}: no answer ({error})") from None


# Prefect -----------------------------------------------------------------------------------------


def prefect_environment(config: StackConfig, home: str) -> dict[str, str]:
    return base_environment() | {"PREFECT_HOME": str(config.state_dir / home),
                                 "PREFECT_API_URL": config.prefect_api_url}  # fmt: skip


def start_prefect_server(config: StackConfig, service: Service, *, ui: bool) -> None:
    environment = prefect_environment(config, "prefect-server") | {
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": config.database_url(config.prefect_database, "asyncpg"),
        "PREFECT_SERVER_UI_ENABLED": "true" if ui else "false",
        # Prefect's 5 s connect and 10 s statement timeouts fail its own services on a busy 2-core machine.
        "PREFECT_SERVER_DATABASE_CONNECTION_TIMEOUT": "30",
        "PREFECT_SERVER_DATABASE_TIMEOUT": "60",
    }
    environment.pop("PREFECT_API_URL")  # the server itself is not a client of an API
    command = [_executable("prefect"), "server", "start", "--host", HOST, "--port", str(config.prefect_port)]
    (config.state_dir / "prefect-server").mkdir(parents=True, exist_ok=True)
    processes.start(service, command, environment, config.state_dir)
    processes.wait_ready(
        service, lambda: processes.http_ok(f"{config.prefect_api_url}/health"), timeout_s=900
    )


def run_prefect(config: StackConfig, project_dir: Path, *arguments: str) -> str:
    """Run a ``prefect`` command against the stack as the pipeline; raise with its output on failure."""
    import subprocess

    environment = prefect_environment(config, "prefect-client") | config.client_environment()
    environment["MEND_PROJECT_DIR"] = str(project_dir)
    done = subprocess.run([_executable("prefect"), *arguments], cwd=project_dir, env=environment,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(
            f"prefect {' '.join(arguments)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
        )
    return done.stdout


def apply_deployments(config: StackConfig, project_dir: Path) -> None:
    """Work pools, then every deployment of infra/prefect/prefect.yaml (both idempotent)."""
    for pool in WORK_POOLS:
        run_prefect(config, project_dir, "work-pool", "create", pool, "--type", "process", "--overwrite")
    run_prefect(config, project_dir, "--no-prompt", "deploy", "--all", "--prefect-file",
                "infra/prefect/prefect.yaml")  # fmt: skip


def start_worker(
    config: StackConfig, service: Service, project_dir: Path, extra_environment: dict[str, str]
) -> None:
    """A process worker on mend-cpu; its flow runs inherit the pipeline's environment."""
    environment = prefect_environment(config, "prefect-worker") | config.client_environment()
    environment |= {"MEND_PROJECT_DIR": str(project_dir), "MEND_HOME": str(config.state_dir / "worker-home")}
    environment |= extra_environment
    command = [_executable("prefect"), "worker", "start", "--pool", WORK_POOLS[0], "--type", "process",
               "--name", WORKER_NAME]  # fmt: skip
    processes.start(service, command, environment, project_dir)
    processes.wait_ready(service, lambda: _worker_polling(config), timeout_s=600)


def _worker_polling(config: StackConfig) -> bool:
    request = urllib.request.Request(
        f"{config.prefect_api_url}/work_pools/{WORK_POOLS[0]}/workers/filter",
        data=b"{}", headers={"Content-Type": "application/json"}, method="POST",
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return any(worker["name"] == WORKER_NAME for worker in json.loads(response.read()))
    except (urllib.error.URLError, OSError, ValueError):
        return False
