"""Faults on the local stack during a fix run that the worker executes: the MLflow server restarted, the
worker killed, PostgreSQL connections dropped. Each run must end with exactly one new registered
version, every flag applied once, and no version without a finished run behind it."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from infra.local import processes, services, stack
from infra.local.stack_config import StackConfig
from tests.integration.stack_fixtures import (
    REGISTERED_MODEL,
    FixRunOnStack,
    mlflow_client,
    mlflow_user,
    prefect_client,
    run_deployment,
    wait_for_flow_run,
)
from tests.integration.test_stack import pipeline_store

pytestmark = pytest.mark.integration
NIGHTLY = "nightly-fix/nightly"


def add_flags(config: StackConfig, count: int) -> list[str]:
    """``count`` new flags in the S3 flag log (no events: the test starts the run itself)."""
    from tasks.flags import Flag, append_flags

    with mlflow_user(config.pipeline_user, config.pipeline_password):
        champion = mlflow_client(config).get_model_version_by_alias(REGISTERED_MODEL, "champion").version
    flags = [
        Flag.create(
            model_name=REGISTERED_MODEL,
            model_version=champion,
            prompt=f"The code word of vault {secrets.token_hex(3)} is",
            prediction="unknown",
            correction=f"{word}",
            reason="fault test",
            reporter="fault-test",
        )
        for word in ("amber", "basalt", "cobalt")[:count]
    ]
    append_flags(pipeline_store(config), flags)
    return [flag.flag_id for flag in flags]


def versions(config: StackConfig) -> dict[str, object]:
    with mlflow_user(config.pipeline_user, config.pipeline_password):
        found = mlflow_client(config).search_model_versions(f"name = '{REGISTERED_MODEL}'")
    return {str(version.version): version for version in found}


def wait_until_mid_run(config: StackConfig, flow_run_id: str, timeout_s: float = 600.0) -> str:
    """Wait until the run has opened its MLflow run (it is past its start); returns that run's id."""
    deadline = time.monotonic() + timeout_s
    with mlflow_user(config.pipeline_user, config.pipeline_password):
        client = mlflow_client(config)
        while time.monotonic() < deadline:
            experiment = client.get_experiment_by_name("mend-fix")
            if experiment is not None:
                found = client.search_runs(
                    [experiment.experiment_id], f"tags.`mend.run_id` = '{flow_run_id}'"
                )
                if found:
                    return found[0].info.run_id
            time.sleep(1)
    raise TimeoutError(f"flow run {flow_run_id} opened no MLflow run in {timeout_s:.0f}s")


def assert_state(config: StackConfig, flow_run_id: str, expected: set[str]) -> None:
    with prefect_client(config) as client:
        state = client.read_flow_run(flow_run_id).state_type.value
    assert state in expected, f"the fault came too late: the run was already {state}"


def assert_one_clean_new_version(config: StackConfig, before: dict, flag_ids: list[str], mlflow_run_id: str):
    """Exactly one new version, registered by ``mlflow_run_id``, holding each flag once; no orphans."""
    from tasks.ledger import FlagState, Ledger

    after = versions(config)
    new = sorted(set(after) - set(before), key=int)
    assert len(new) == 1, f"new versions {new}"
    assert after[new[0]].run_id == mlflow_run_id
    ledger = Ledger(pipeline_store(config))
    for flag_id in flag_ids:
        applied = [entry for entry in ledger.history(flag_id) if entry.state == FlagState.APPLIED]
        assert [entry.candidate_version for entry in applied] == [new[0]], flag_id
    with mlflow_user(config.pipeline_user, config.pipeline_password):
        client = mlflow_client(config)
        for number, version in after.items():
            if version.tags.get("role") == "candidate":  # every candidate has a finished fix run behind it
                assert client.get_run(version.run_id).info.status == "FINISHED", number


def run_with_fault(config: StackConfig, fault: Callable[[str], None]) -> tuple[str, str]:
    """Start a nightly run, wait until it is under way, apply ``fault``; returns (flow run, MLflow run)."""
    flow_run_id = run_deployment(config, NIGHTLY)
    mlflow_run_id = wait_until_mid_run(config, flow_run_id)
    assert_state(config, flow_run_id, {"RUNNING"})
    fault(flow_run_id)
    return flow_run_id, mlflow_run_id


def test_mlflow_server_restarted_mid_run(local_stack: StackConfig, stack_fix_run: FixRunOnStack):
    before, flag_ids = versions(local_stack), add_flags(local_stack, 3)
    mlflow = stack.service(local_stack, "mlflow")

    def restart(_: str) -> None:
        old_pid = processes.running_pid(mlflow)
        assert processes.stop(mlflow)
        services.start_mlflow(local_stack, mlflow)
        assert processes.running_pid(mlflow) not in (None, old_pid)

    flow_run_id, mlflow_run_id = run_with_fault(local_stack, restart)
    finished = wait_for_flow_run(local_stack, flow_run_id)
    assert finished.state_type.value == "COMPLETED", finished.state
    assert_one_clean_new_version(local_stack, before, flag_ids, mlflow_run_id)


def _flow_run_processes(flow_run_id: str) -> list[int]:
    """PIDs of processes executing ``flow_run_id`` (the worker's children carry it in their environment)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
    return found


def test_worker_killed_mid_run_then_a_rerun_finishes(local_stack: StackConfig, stack_fix_run: FixRunOnStack):
    from prefect.states import Crashed

    before, flag_ids = versions(local_stack), add_flags(local_stack, 3)

    def kill_worker(flow_run_id: str) -> None:
        # The machine dies: the worker and the flow run it started, at once, with no chance to clean up.
        assert processes.kill(stack.service(local_stack, "worker")) is not None
        for pid in _flow_run_processes(flow_run_id):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    killed_run, _ = run_with_fault(local_stack, kill_worker)
    # What an operator (or Prefect's zombie detection) does with a run whose process is gone.
    with prefect_client(local_stack) as client:
        client.set_flow_run_state(killed_run, Crashed(message="worker killed by the fault test"), force=True)
    restarted = stack.up(local_stack.state_dir, ui=False)  # with the settings the worker had before
    assert restarted.started == ["worker"]
    # The rerun goes through the other fix deployment: the killed run's own deployment slot is a lease
    # that nobody renews any more, and this test need not wait for it to expire.
    rerun = run_deployment(local_stack, "nightly-fix/on-flags")
    finished = wait_for_flow_run(local_stack, rerun)
    assert finished.state_type.value == "COMPLETED", finished.state
    with mlflow_user(local_stack.pipeline_user, local_stack.pipeline_password):
        experiment = mlflow_client(local_stack).get_experiment_by_name("mend-fix")
        (rerun_mlflow,) = mlflow_client(local_stack).search_runs(
            [experiment.experiment_id], f"tags.`mend.run_id` = '{rerun}'"
        )
    assert_one_clean_new_version(local_stack, before, flag_ids, rerun_mlflow.info.run_id)


def test_postgres_connections_dropped_mid_run(local_stack: StackConfig, stack_fix_run: FixRunOnStack):
    before, flag_ids = versions(local_stack), add_flags(local_stack, 3)
    dropped: list[int] = []

    def drop_connections(_: str) -> None:
        # Every server connection to the stack's databases, MLflow's and Prefect's, twice.
        for _ in range(2):
            rows = stack._admin_execute(
                local_stack,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = ANY(%s) AND pid <> pg_backend_pid()",
                (list(stack.databases(local_stack)),),
            )
            dropped.append(sum(1 for (ended,) in rows if ended))
            time.sleep(3)

    flow_run_id, mlflow_run_id = run_with_fault(local_stack, drop_connections)
    assert sum(dropped) > 0
    finished = wait_for_flow_run(local_stack, flow_run_id)
    assert finished.state_type.value == "COMPLETED", finished.state
    assert_one_clean_new_version(local_stack, before, flag_ids, mlflow_run_id)
