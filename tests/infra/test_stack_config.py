"""The local stack's env file and PID records: generated once and private, read strictly, and a PID
file never leads to signalling a process that is not the service."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from infra.local import processes
from infra.local.processes import Service
from infra.local.stack_config import ENV_FILE, StackConfigError, load_or_create, read_env_file


def test_env_file_is_generated_once_private_and_read_back(tmp_path: Path):
    config = load_or_create(tmp_path / "stack")
    path = tmp_path / "stack" / ENV_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create(tmp_path / "stack") == config  # a second start reads, never regenerates
    ports = [config.seaweed_s3_port, config.seaweed_filer_port, config.mlflow_port, config.prefect_port]
    assert len(set(ports)) == len(ports)
    assert load_or_create(tmp_path / "other").s3_secret_key != config.s3_secret_key


def test_pipeline_environment_carries_no_admin_credential(tmp_path: Path):
    config = load_or_create(tmp_path)
    environment = config.client_environment()
    assert environment["MLFLOW_TRACKING_USERNAME"] == config.pipeline_user
    assert config.mlflow_admin_password not in environment.values()
    assert config.flask_secret not in environment.values()
    assert environment["PREFECT_API_URL"].startswith("http://127.0.0.1:")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda text: text.replace("MEND_STACK_MLFLOW_PORT=", "MEND_STACK_MLFLOW_PORT=x"),
            "MEND_STACK_MLFLOW_PORT",
        ),
        (lambda text: text.replace("MEND_STACK_PREFECT_PORT=", "MEND_STACK_PREFECT_PORT=9"), "not a port"),
        (
            lambda text: "\n".join(line for line in text.splitlines() if "BUCKET=" not in line),
            "MEND_STACK_BUCKET",
        ),
        (lambda text: text + "MEND_STACK_COLOUR=blue\n", "MEND_STACK_COLOUR"),
        (lambda text: text + "not a setting\n", "expected MEND_STACK_"),
    ],
)
def test_a_bad_env_file_is_refused_naming_the_variable(tmp_path: Path, change, message):
    load_or_create(tmp_path)
    path = tmp_path / ENV_FILE
    path.write_text(change(path.read_text()))
    with pytest.raises(StackConfigError, match=message):
        read_env_file(path)


def test_service_is_recorded_by_pid_and_stopped_with_its_children(tmp_path: Path):
    service = Service("sleeper", tmp_path)
    # A parent that starts a child: stopping the service must reach both (one process group).
    script = "import subprocess, time; subprocess.Popen(['sleep', '300']); time.sleep(300)"
    pid = processes.start(service, [sys.executable, "-c", script], {"PATH": "/usr/bin:/bin"}, tmp_path)
    assert processes.running_pid(service) == pid
    assert processes.stop(service, grace_s=10)
    assert processes.running_pid(service) is None and not service.pid_file.exists()
    members = subprocess.run(["pgrep", "-g", str(pid)], capture_output=True, text=True).stdout.split()
    assert members == []
    assert not processes.stop(service)  # nothing left to stop


def test_a_reused_pid_is_not_taken_for_the_service(tmp_path: Path):
    service = Service("stale", tmp_path)
    bystander = subprocess.Popen(["sleep", "300"])
    try:
        service.pid_file.parent.mkdir(parents=True)
        # The PID is alive, but its start time is not the recorded one: another process has it now.
        service.pid_file.write_text(f"{bystander.pid} 1\n")
        assert processes.running_pid(service) is None and not service.pid_file.exists()
        assert not processes.stop(service)
        assert bystander.poll() is None  # never signalled
    finally:
        bystander.kill()
        bystander.wait()
