"""The cluster deployment files cannot run here (no container engine, no cluster); these tests check what
can be checked without one: the compose file against the Compose Specification's schema, the manifests'
required fields and GPU request, the image's dependencies against pyproject's pins, every deployment
entrypoint against a real flow, and that no credential is written into any of them."""

from __future__ import annotations

import importlib
import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
CREDENTIAL_NAME = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|TOKEN|CONNECTION_URL|BACKEND_STORE_URI")


def _compose() -> dict:
    return yaml.safe_load((INFRA / "compose.yaml").read_text())


def _pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {}
    for requirement in project["dependencies"]:
        name, _, version = requirement.partition("==")
        pins[name.strip().lower()] = version.strip()
    return pins


def test_compose_file_follows_the_compose_specification():
    import jsonschema
    from check_jsonschema.builtin_schemas import get_builtin_schema

    schema = get_builtin_schema("vendor.compose-spec")
    jsonschema.validate(_compose(), schema)


def test_compose_runs_the_stack_with_an_optional_gpu_worker():
    services = _compose()["services"]
    assert {"postgres", "s3", "prefect-server", "mlflow", "worker", "deploy", "gpu-worker"} <= set(services)
    assert "--app-name basic-auth" in " ".join(services["mlflow"]["command"].split())
    assert services["worker"]["command"][-4:] == ["--pool", "mend-cpu", "--type", "process"]
    gpu = services["gpu-worker"]
    assert gpu["profiles"] == ["gpu"] and "--pool" in gpu["command"] and "mend-gpu" in gpu["command"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert all("profiles" not in services[name] for name in ("postgres", "s3", "prefect-server", "mlflow"))
    # Ports are published on loopback only.
    published = [port for service in services.values() for port in service.get("ports", [])]
    assert published and all(port.startswith("127.0.0.1:") for port in published)


def test_no_credential_is_written_into_the_deployment_files():
    services = _compose()["services"]
    for name, service in services.items():
        environment = service.get("environment", {})
        assert not [key for key in environment if CREDENTIAL_NAME.search(key)], name
    referenced = {item for service in services.values() for item in service.get("env_file", [])}
    assert referenced == {"cluster.env"}
    ignored = (ROOT / ".gitignore").read_text().split()
    assert "/infra/cluster.env" in ignored and "/infra/secrets/" in ignored
    for line in (INFRA / "cluster.env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            assert not (CREDENTIAL_NAME.search(key) and value), f"cluster.env.example fills in {key}"
    for path in [INFRA / "docker" / "Dockerfile", *sorted((INFRA / "k8s").iterdir())]:
        text = path.read_text()
        assert not re.search(
            r"(?i)(password|secret_access_key|secret)\s*[:=]\s*['\"]?[A-Za-z0-9/+]{8,}", text
        ), path


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = (INFRA / "docker" / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_the_image_installs_exactly_the_pins_of_pyproject():
    instructions = _dockerfile_instructions()
    base = next(argument for kind, argument in instructions if kind == "FROM")
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert base.startswith("python:3.11") and ">=3.11" in requires
    copied = {shlex.split(argument)[0] for kind, argument in instructions if kind == "COPY"}
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert {pattern.rstrip("*") for pattern in packages["include"]} <= copied and "pyproject.toml" in copied
    installs = [
        command for kind, argument in instructions if kind == "RUN"
        for command in argument.split("&&") if "pip install" in command
    ]  # fmt: skip
    assert installs, "the Dockerfile installs nothing"
    pins = _pins()
    for command in installs:
        words = shlex.split(command)
        requirements = [word for word in words[words.index("install") + 1 :] if not word.startswith("-")]
        # Only the project itself (whose pins are pyproject's) or a requirement pinned exactly as there.
        for requirement in requirements:
            if requirement == ".":
                continue
            name, _, version = requirement.partition("==")
            assert pins.get(name.lower()) == version, (
                f"Dockerfile installs {requirement}, pyproject pins {name}=={pins.get(name.lower())}"
            )
    assert any("pip check" in argument for kind, argument in instructions if kind == "RUN")


def _manifests() -> list[dict]:
    return [doc for doc in yaml.safe_load_all((INFRA / "k8s" / "worker.yaml").read_text()) if doc]


def test_kubernetes_manifests_have_their_required_fields():
    documents = _manifests()
    for document in documents:
        assert {"apiVersion", "kind", "metadata"} <= set(document), document
        assert document["metadata"]["name"] and document["metadata"]["namespace"] == "mend"
    by_kind = {}
    for document in documents:
        by_kind.setdefault(document["kind"], []).append(document)
    (deployment,) = by_kind["Deployment"]
    spec = deployment["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    (container,) = spec["template"]["spec"]["containers"]
    assert container["image"] and container["args"][-4:] == ["--pool", "mend-gpu", "--type", "kubernetes"]
    accounts = {account["metadata"]["name"] for account in by_kind["ServiceAccount"]}
    assert spec["template"]["spec"]["serviceAccountName"] in accounts
    (binding,) = by_kind["RoleBinding"]
    assert binding["roleRef"]["name"] in {role["metadata"]["name"] for role in by_kind["Role"]}
    assert {subject["name"] for subject in binding["subjects"]} <= accounts


def _placeholders(value) -> set[str]:
    if isinstance(value, dict):
        return set().union(*(_placeholders(item) for item in value.values()), set())
    if isinstance(value, list):
        return set().union(*(_placeholders(item) for item in value), set())
    return set(re.findall(r"\{\{\s*(\w+)\s*\}\}", value)) if isinstance(value, str) else set()


def test_the_gpu_work_pool_job_template_requests_a_gpu():
    template = json.loads((INFRA / "k8s" / "gpu-job-template.json").read_text())
    configuration, variables = template["job_configuration"], template["variables"]["properties"]
    manifest = configuration["job_manifest"]
    assert manifest["apiVersion"] == "batch/v1" and manifest["kind"] == "Job"
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpus }}"
    assert variables["gpus"]["default"] >= 1 and variables["gpus"]["minimum"] == 1
    assert container["envFrom"] == [{"secretRef": {"name": "mend-credentials"}}]
    accounts = {doc["metadata"]["name"] for doc in _manifests() if doc["kind"] == "ServiceAccount"}
    assert manifest["spec"]["template"]["spec"]["serviceAccountName"] in accounts
    # Prefect passes a variable on only where job_configuration references it, and fills only known ones.
    assert _placeholders(configuration) == set(variables)


def _prefect_yaml() -> dict:
    return yaml.safe_load((INFRA / "prefect" / "prefect.yaml").read_text())


@pytest.mark.parametrize("deployment", _prefect_yaml()["deployments"], ids=lambda d: d["name"])
def test_every_deployment_entrypoint_resolves_to_a_flow(deployment):
    from prefect import Flow

    path, _, name = deployment["entrypoint"].partition(":")
    assert (ROOT / path).is_file(), path
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    assert isinstance(getattr(module, name), Flow), deployment["entrypoint"]


def test_the_workers_poll_the_pools_the_deployments_name():
    pools = {d["work_pool"]["name"] for d in _prefect_yaml()["deployments"]}
    services = _compose()["services"]
    polled = {s["command"][s["command"].index("--pool") + 1] for s in services.values()
              if isinstance(s.get("command"), list) and "--pool" in s["command"]}  # fmt: skip
    assert pools == polled == {"mend-cpu", "mend-gpu"}
    (container,) = next(d for d in _manifests() if d["kind"] == "Deployment")["spec"]["template"]["spec"][
        "containers"
    ]
    assert container["args"][container["args"].index("--pool") + 1] in pools
