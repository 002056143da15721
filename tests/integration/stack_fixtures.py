"""The local stack (infra/local) for integration tests: one per session, on free loopback ports.

``local_stack`` starts SeaweedFS, MLflow with basic auth, a Prefect server on PostgreSQL and a process
worker whose flow runs use the tiny Llama and the FT+KL editor (seconds per run, not minutes), and
stops every process by PID and drops its databases afterwards. ``stack_fix_run`` is the first fix run
on it: 10 flags through the demo script, the trigger, the worker.

PYTEST_DONT_REWRITE: imported by conftest before pytest could rewrite it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from infra.local import stack
from infra.local.stack_config import StackConfig
from tests.paths import DATA_DIR, PROJECT
from tests.pipeline_fixtures import LENIENT

REGISTERED_MODEL = "mend-stack-test"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@dataclass(frozen=True)
class FixRunOnStack:
    flow_run_id: str
    mlflow_run_id: str
    candidate_version: str
    demo_output: str


def worker_environment(state_dir: Path, tiny_base_dir: Path) -> dict[str, str]:
    thresholds = state_dir.parent / "thresholds.json"
    thresholds.write_text(json.dumps(LENIENT))
    return {
        "MEND_BASE_MODEL": str(tiny_base_dir), "MEND_EDITOR": "ft-kl", "MEND_FT_STEPS": "20", "MEND_FT_LR": "0.01",
        "MEND_REGISTERED_MODEL": REGISTERED_MODEL, "MEND_DATA_DIR": str(DATA_DIR),
        "MEND_LOCALITY_POOL_PROMPTS": "20", "MEND_REFERENCE_TEXTS": "8", "MEND_PROTECTED_TEXTS": "16",
        "MEND_PROTECTED_FACTS": "20", "MEND_GATE_THRESHOLDS": str(thresholds),
        "MEND_CACHE_DIR": str(state_dir.parent / "cache"), "OMP_NUM_THREADS": "1",
        # An MLflow restart takes longer than the client's default retries cover on a busy machine.
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "10", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
        # A killed run's ledger slot frees after this lease instead of Prefect's 5 minutes.
        "MEND_LEDGER_LEASE_SECONDS": "60",
    }  # fmt: skip


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory, tiny_base_dir: Path) -> Iterator[StackConfig]:
    state_dir = tmp_path_factory.mktemp("stack") / "state"
    try:
        result = stack.up(
            state_dir, worker_environment=worker_environment(state_dir, tiny_base_dir), ui=False
        )
        yield result.config
    finally:
        stack.down(state_dir, purge=True)


@contextmanager
def mlflow_user(user: str | None, password: str | None) -> Iterator[None]:
    """MLflow's client reads its basic-auth credentials from the environment; set them for a block."""
    names = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    saved = {name: os.environ.get(name) for name in names}
    for name, value in zip(names, (user, password), strict=True):
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def mlflow_client(config: StackConfig):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=config.mlflow_url, registry_uri=config.mlflow_url)


def prefect_client(config: StackConfig):
    """A client of the stack's Prefect API (explicit URL: the session's test server is another one)."""
    from prefect.client.orchestration import SyncPrefectClient

    return SyncPrefectClient(api=config.prefect_api_url)


def wait_for_flow_run(config: StackConfig, flow_run_id: str, timeout_s: float = 900.0):
    deadline = time.monotonic() + timeout_s
    with prefect_client(config) as client:
        while time.monotonic() < deadline:
            run = client.read_flow_run(flow_run_id)
            if run.state_type is not None and run.state_type.value in TERMINAL:
                return run
            time.sleep(2)
    raise TimeoutError(f"flow run {flow_run_id} did not finish in {timeout_s:.0f}s")


def run_deployment(config: StackConfig, name: str, parameters: dict | None = None) -> str:
    """Create a run of ``mend-fix``'s deployment ``name`` (flow/deployment) for the worker; its id."""
    with prefect_client(config) as client:
        deployment = client.read_deployment_by_name(name)
        run = client.create_flow_run_from_deployment(deployment.id, parameters=parameters or {})
    return str(run.id)


def stack_subprocess_env(config: StackConfig) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "AWS_"))}
    return environment | {"MEND_STACK_DIR": str(config.state_dir)}


@pytest.fixture(scope="session")
def stack_fix_run(local_stack: StackConfig, tmp_path_factory: pytest.TempPathFactory) -> FixRunOnStack:
    """10 wrong answers flagged with `mend flag` by the demo script; the trigger and the worker do the rest."""
    facts = tmp_path_factory.mktemp("facts") / "facts.jsonl"
    lines = (PROJECT / "flows" / "demo_facts.jsonl").read_text().splitlines()[:10]
    facts.write_text("\n".join(lines) + "\n")  # the random tiny model answers none of them right
    command = [sys.executable, "-m", "infra.local.run_demo", "--facts", str(facts),
               "--timeout-minutes", "15", "--settle-seconds", "15"]  # fmt: skip
    done = subprocess.run(command, cwd=PROJECT, env=stack_subprocess_env(local_stack), capture_output=True,
                          text=True, timeout=1200)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert "flagging 10 wrong answers" in done.stdout, done.stdout
    found = re.search(
        r"flow run \S+ \((\S+)\): COMPLETED; MLflow run (\w+) .*candidate version (\d+)", done.stdout
    )
    assert found, done.stdout
    return FixRunOnStack(found[1], found[2], found[3], done.stdout)
