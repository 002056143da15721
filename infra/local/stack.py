"""The local stack in one command: ``python -m infra.local.stack up|down|status`` (``make services-up``).

``up`` creates the stack's PostgreSQL databases, then starts SeaweedFS, MLflow (basic auth), the
Prefect server and a process worker, applies the work pools and deployments, and writes
``client.env`` (what ``mend`` needs to use the stack as the pipeline). A service whose recorded PID is
still running is left alone, so a second ``up`` is harmless. ``down`` stops each service by its PID,
worker first; ``down --purge`` also drops the databases and deletes the state directory.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from infra.local import processes, services
from infra.local.processes import Service
from infra.local.stack_config import StackConfig, load_or_create

LOGGER = logging.getLogger("infra.local.stack")
PROJECT_DIR = Path(__file__).resolve().parents[2]
DEFAULT_STATE_DIR = Path(".mend") / "stack"  # relative to the project; ignored by git
SERVICE_NAMES = ("seaweed", "mlflow", "prefect-server", "worker")  # start order; stopped in reverse
CLIENT_ENV = "client.env"
WORKER_EXTRA = "worker-extra.json"


@dataclass
class UpResult:
    config: StackConfig
    pids: dict[str, int]
    started: list[str] = field(default_factory=list)  # services this call started (empty: all were up)
    seconds: float = 0.0


def state_dir_from_env() -> Path:
    configured = os.environ.get("MEND_STACK_DIR")
    return Path(configured) if configured else PROJECT_DIR / DEFAULT_STATE_DIR


def service(config: StackConfig, name: str) -> Service:
    return Service(name, config.state_dir)


def _admin_execute(config: StackConfig, statement: str, parameters: tuple = ()) -> list[tuple]:
    import psycopg2

    connection = psycopg2.connect(
        host=config.pg_host, port=config.pg_port, user=config.pg_user, dbname="postgres"
    )
    try:
        connection.autocommit = True  # CREATE/DROP DATABASE cannot run inside a transaction
        with connection.cursor() as cursor:
            cursor.execute(statement, parameters)
            return cursor.fetchall() if cursor.description else []
    finally:
        connection.close()


def databases(config: StackConfig) -> tuple[str, ...]:
    return (config.mlflow_database, config.mlflow_auth_database, config.prefect_database)


def create_databases(config: StackConfig) -> None:
    for name in databases(config):
        if not _admin_execute(config, "SELECT 1 FROM pg_database WHERE datname = %s", (name,)):
            _admin_execute(config, f'CREATE DATABASE "{name}"')


def drop_databases(config: StackConfig) -> None:
    for name in databases(config):
        # FORCE ends connections a killed server may have left behind (PostgreSQL 13+).
        _admin_execute(config, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def write_client_env(config: StackConfig, extra: Mapping[str, str] = ()) -> Path:
    """``client.env``: the pipeline's environment for `mend` and scripts (``set -a; . client.env``)."""
    values = config.client_environment() | {"MEND_PROJECT_DIR": str(PROJECT_DIR),
                                            "MEND_HOME": str(config.state_dir / "client-home")} | dict(extra)  # fmt: skip
    path = config.state_dir / CLIENT_ENV
    services._private_file(path, "".join(f"{name}={value}\n" for name, value in values.items()))
    return path


def _worker_extra(config: StackConfig, given: Mapping[str, str] | None) -> dict[str, str]:
    """The worker's extra settings (e.g. a smaller model): as given, else as given on an earlier ``up``,
    so a restarted worker and ``client.env`` keep them."""
    path = config.state_dir / WORKER_EXTRA
    if given is None:
        return json.loads(path.read_text()) if path.exists() else {}
    services._private_file(path, json.dumps(dict(given), indent=1))
    return dict(given)


def up(
    state_dir: Path | None = None,
    *,
    worker_environment: Mapping[str, str] | None = None,
    ui: bool = True,
) -> UpResult:
    """Start whatever of the stack is not running; apply deployments when anything was started."""
    began = time.monotonic()
    config = load_or_create(state_dir or state_dir_from_env())
    extra = _worker_extra(config, worker_environment)
    result = UpResult(config, {})
    create_databases(config)
    starters = {
        "seaweed": lambda s: services.start_seaweed(config, s),
        "mlflow": lambda s: services.start_mlflow(config, s),
        "prefect-server": lambda s: services.start_prefect_server(config, s, ui=ui),
    }
    for name, starter in starters.items():
        if processes.running_pid(service(config, name)) is None:
            starter(service(config, name))
            result.started.append(name)
    services.ensure_mlflow_user(config, config.pipeline_user, config.pipeline_password)
    worker = service(config, "worker")
    if result.started or processes.running_pid(worker) is None:
        services.apply_deployments(config, PROJECT_DIR)
        if processes.running_pid(worker) is None:
            services.start_worker(config, worker, PROJECT_DIR, extra)
            result.started.append("worker")
    write_client_env(config, extra)
    result.pids = {name: processes.running_pid(service(config, name)) for name in SERVICE_NAMES}
    result.seconds = time.monotonic() - began
    return result


def down(state_dir: Path | None = None, *, purge: bool = False) -> list[str]:
    """Stop every service by PID (worker first); ``purge`` also drops databases and state."""
    directory = state_dir or state_dir_from_env()
    if not (directory / "stack.env").exists():
        return []
    config = load_or_create(directory)
    stopped = [name for name in reversed(SERVICE_NAMES) if processes.stop(service(config, name))]
    if purge:
        drop_databases(config)
        shutil.rmtree(directory, ignore_errors=True)
    return stopped


def status(state_dir: Path | None = None) -> dict[str, int | None]:
    directory = state_dir or state_dir_from_env()
    if not (directory / "stack.env").exists():
        return dict.fromkeys(SERVICE_NAMES)
    config = load_or_create(directory)
    return {name: processes.running_pid(service(config, name)) for name in SERVICE_NAMES}


def _print_up(result: UpResult) -> None:
    config = result.config
    verb = f"started {', '.join(result.started)}" if result.started else "already running"
    print(f"stack {verb} in {result.seconds:.1f} s (state: {config.state_dir})")
    print(f"  S3 (SeaweedFS)  {config.s3_url}   buckets {config.bucket}, {config.artifact_bucket}")
    print(f"  MLflow          {config.mlflow_url}   users {config.mlflow_admin_user}, {config.pipeline_user}")
    print(f"  Prefect         {config.prefect_api_url.removesuffix('/api')}   worker on mend-cpu")
    print(f"  credentials     {config.state_dir / 'stack.env'}; pipeline env {config.state_dir / CLIENT_ENV}")
    for name, pid in result.pids.items():
        print(f"  {name:<15} pid {pid}")


def main(arguments: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.local.stack", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument("--purge", action="store_true", help="down: also drop databases and delete state")
    options = parser.parse_args(arguments)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if options.command == "up":
        _print_up(up())
    elif options.command == "down":
        stopped = down(purge=options.purge)
        print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
    else:
        for name, pid in status().items():
            print(f"{name:<15} {'pid ' + str(pid) if pid else 'not running'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
