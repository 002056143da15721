"""The local stack (make services-up) with a real worker: deployments applied, 10 flags trigger a fix
run that the worker executes, its candidate and artifacts land in MLflow and SeaweedFS, and the
``promote`` deployment moves the alias."""

from __future__ import annotations

import json

import pytest

from infra.local import processes, stack
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

pytestmark = pytest.mark.integration


def pipeline_store(config: StackConfig):
    from tasks.storage import S3Settings, open_store

    settings = S3Settings(endpoint_url=config.s3_url, access_key_id=config.s3_access_key,
                          secret_access_key=config.s3_secret_key)  # fmt: skip
    return open_store(config.store_uri, s3_settings=settings)


def test_second_services_up_is_harmless(local_stack: StackConfig):
    before = stack.status(local_stack.state_dir)
    assert all(before.values()), before
    again = stack.up(local_stack.state_dir, ui=False)
    assert again.started == [] and again.pids == before
    # Every service is one recorded PID that is really running.
    for name, pid in before.items():
        assert processes.running_pid(stack.service(local_stack, name)) == pid


def test_deployments_schedule_and_trigger_are_applied(local_stack: StackConfig):
    with prefect_client(local_stack) as client:
        deployments = {d.name: d for d in client.read_deployments()}
        automations = client.read_automations()
        workers = client.read_workers_for_work_pool("mend-cpu")
    assert {"nightly", "on-flags", "train-editor", "promote", "rollback"} <= set(deployments)
    nightly = deployments["nightly"]
    assert nightly.schedules[0].schedule.cron == "0 2 * * *" and nightly.schedules[0].active
    assert nightly.work_pool_name == "mend-cpu" and deployments["train-editor"].work_pool_name == "mend-gpu"
    (trigger,) = [a.trigger for a in automations if "on-flags" in a.name]
    assert trigger.expect == {"mend.prediction.flagged"} and trigger.threshold == 10
    assert [worker.name for worker in workers] == ["mend-local-worker"]


def test_ten_flags_trigger_a_fix_run_on_the_worker(local_stack: StackConfig, stack_fix_run: FixRunOnStack):
    from tasks.ledger import FlagState, Ledger

    with prefect_client(local_stack) as client:
        flow_run = client.read_flow_run(stack_fix_run.flow_run_id)
        deployment = client.read_deployment(flow_run.deployment_id)
    assert deployment.name == "on-flags" and flow_run.state_type.value == "COMPLETED"
    assert flow_run.work_pool_name == "mend-cpu"  # run by the worker, not in the test process
    # The ledger in S3: the 10 flags are applied in this run's candidate, each once.
    states = Ledger(pipeline_store(local_stack)).states()
    applied = [e for e in states.values() if e.candidate_version == stack_fix_run.candidate_version]
    assert len(applied) == 10 and {e.state for e in applied} == {FlagState.APPLIED}

    with mlflow_user(local_stack.pipeline_user, local_stack.pipeline_password):
        client = mlflow_client(local_stack)
        run = client.get_run(stack_fix_run.mlflow_run_id)
        assert run.info.status == "FINISHED" and run.data.tags["mend.run_id"] == stack_fix_run.flow_run_id
        version = client.get_model_version_by_alias(REGISTERED_MODEL, "candidate")
        assert version.version == stack_fix_run.candidate_version and version.run_id == run.info.run_id
        logged = {item.path for item in client.list_artifacts(run.info.run_id, "gate")}
    assert "gate/gate_result.json" in logged
    # The artifacts are objects in SeaweedFS, under the run's id, read back with boto3.
    from infra.local.services import s3_client

    s3 = s3_client(local_stack)
    listing = s3.list_objects_v2(Bucket=local_stack.artifact_bucket, Prefix="artifacts/")
    keys = [item["Key"] for item in listing.get("Contents", [])]
    gate_keys = [k for k in keys if run.info.run_id in k and k.endswith("gate/gate_result.json")]
    assert gate_keys, keys[:20]
    body = s3.get_object(Bucket=local_stack.artifact_bucket, Key=gate_keys[0])["Body"].read()
    assert json.loads(body)["success"] is True  # the gate passed (lenient thresholds for a tiny model)


def test_promote_deployment_moves_the_champion_alias(local_stack: StackConfig, stack_fix_run: FixRunOnStack):
    version = stack_fix_run.candidate_version
    flow_run_id = run_deployment(local_stack, "promote/promote",
                                 {"version": version, "approver": "stack-test", "approve": True})  # fmt: skip
    finished = wait_for_flow_run(local_stack, flow_run_id, timeout_s=600)
    assert finished.state_type.value == "COMPLETED", finished.state
    with mlflow_user(local_stack.pipeline_user, local_stack.pipeline_password):
        champion = mlflow_client(local_stack).get_model_version_by_alias(REGISTERED_MODEL, "champion")
    assert champion.version == version and champion.tags["approved_by"] == "stack-test"
