"""Access control on the local stack: S3 and MLflow refuse strangers, a user without permission on the
registered model cannot approve or move an alias (the pipeline's user can), and no credential ends up
in MLflow params, tags, artifacts or any log."""

from __future__ import annotations

import base64
import secrets
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from infra.local.stack_config import StackConfig
from tests.integration.stack_fixtures import (
    REGISTERED_MODEL,
    FixRunOnStack,
    mlflow_client,
    mlflow_user,
    prefect_client,
)

pytestmark = pytest.mark.integration


def _s3_error(client, bucket: str) -> str:
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as refused:
        client.list_objects_v2(Bucket=bucket)
    return refused.value.response["Error"]["Code"]


def test_s3_refuses_missing_and_wrong_credentials(local_stack: StackConfig):
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    from infra.local.services import s3_client

    anonymous = boto3.client("s3", endpoint_url=local_stack.s3_url, region_name="us-east-1",
                             config=Config(signature_version=UNSIGNED, retries={"max_attempts": 1}))  # fmt: skip
    assert _s3_error(anonymous, local_stack.bucket) == "AccessDenied"
    wrong_secret = s3_client(local_stack, aws_secret_access_key=secrets.token_urlsafe(24))
    assert _s3_error(wrong_secret, local_stack.bucket) == "SignatureDoesNotMatch"
    unknown_key = s3_client(local_stack, aws_access_key_id="nobody" + secrets.token_hex(4))
    assert _s3_error(unknown_key, local_stack.bucket) == "InvalidAccessKeyId"
    assert s3_client(local_stack).list_objects_v2(Bucket=local_stack.bucket)["KeyCount"] >= 1


def _status(url: str, user: str | None = None, password: str | None = None) -> int:
    headers = {}
    if user is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_mlflow_refuses_unauthenticated_requests(local_stack: StackConfig):
    url = f"{local_stack.mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1"
    assert _status(url) == 401
    assert _status(url, local_stack.pipeline_user, "wrong-" + secrets.token_hex(4)) == 401
    assert _status(url, local_stack.pipeline_user, local_stack.pipeline_password) == 200


def test_only_permitted_users_approve_or_move_aliases(local_stack: StackConfig, stack_fix_run: FixRunOnStack):
    from mlflow.exceptions import MlflowException

    from infra.local.services import ensure_mlflow_user

    user, password = f"reviewer-{secrets.token_hex(3)}", secrets.token_urlsafe(12)
    ensure_mlflow_user(local_stack, user, password)
    version = stack_fix_run.candidate_version
    with mlflow_user(user, password):
        client = mlflow_client(local_stack)
        assert client.get_model_version(REGISTERED_MODEL, version).version == version  # READ by default
        for attempt in (
            lambda: client.set_model_version_tag(REGISTERED_MODEL, version, "approved_by", user),
            lambda: client.set_registered_model_alias(REGISTERED_MODEL, "champion", version),
            lambda: client.delete_registered_model_alias(REGISTERED_MODEL, "candidate"),
        ):
            with pytest.raises(MlflowException) as refused:
                attempt()
            assert refused.value.error_code == "PERMISSION_DENIED"
    with mlflow_user(local_stack.pipeline_user, local_stack.pipeline_password):
        client = mlflow_client(local_stack)
        assert client.get_model_version(REGISTERED_MODEL, version).tags.get("approved_by") != user
        client.set_model_version_tag(REGISTERED_MODEL, version, "security_check", "pipeline")
        client.set_registered_model_alias(REGISTERED_MODEL, "security-check", version)
        assert client.get_model_version_by_alias(REGISTERED_MODEL, "security-check").version == version
        client.delete_registered_model_alias(REGISTERED_MODEL, "security-check")


def _mlflow_texts(config: StackConfig, directory: Path) -> dict[str, str]:
    """Every param, tag and artifact of every run, and every model-version tag, as named texts."""
    texts: dict[str, str] = {}
    with mlflow_user(config.pipeline_user, config.pipeline_password):
        client = mlflow_client(config)
        for experiment in client.search_experiments():
            for run in client.search_runs([experiment.experiment_id]):
                texts[f"run {run.info.run_id} params"] = repr(run.data.params)
                texts[f"run {run.info.run_id} tags"] = repr(run.data.tags)
                local = Path(client.download_artifacts(run.info.run_id, "", str(directory / run.info.run_id)))
                for path in local.rglob("*"):
                    if path.is_file():
                        texts[f"artifact {path.relative_to(directory)}"] = path.read_bytes().decode(
                            errors="replace"
                        )
        for version in client.search_model_versions(f"name = '{REGISTERED_MODEL}'"):
            texts[f"version {version.version} tags"] = repr(version.tags)
    return texts


def _log_texts(config: StackConfig) -> dict[str, str]:
    """The flow runs' logs in Prefect and every service's log file."""
    from prefect.client.schemas.filters import LogFilter

    with prefect_client(config) as client:
        records = client.read_logs(LogFilter(), limit=200)
        offset = len(records)
        while True:  # the API pages its answer
            page = client.read_logs(LogFilter(), limit=200, offset=offset)
            if not page:
                break
            records, offset = records + page, offset + len(page)
    texts = {"prefect logs": "\n".join(record.message for record in records)}
    for path in (config.state_dir / "logs").glob("*.log"):
        texts[f"log {path.name}"] = path.read_text(errors="replace")
    return texts


def test_no_credential_in_params_tags_artifacts_or_logs(
    local_stack: StackConfig, stack_fix_run: FixRunOnStack, tmp_path: Path
):
    texts = _mlflow_texts(local_stack, tmp_path) | _log_texts(local_stack)
    assert any(name.startswith("artifact ") for name in texts) and texts["prefect logs"]
    assert stack_fix_run.mlflow_run_id in "".join(texts)  # the fix run's own records were scanned
    credentials = local_stack.secrets() | {"s3_access_key": local_stack.s3_access_key}
    leaks = [
        (where, which)
        for where, text in texts.items()
        for which, value in credentials.items()
        if value in text
    ]
    assert not leaks, leaks
