"""Deployments: `prefect deploy` of infra/prefect/prefect.yaml against a real server, and the
flagged-prediction event that the event trigger listens for."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("prefect_server")
ROOT = Path(__file__).resolve().parents[2]


def _prefect(*arguments: str) -> subprocess.CompletedProcess:
    from prefect.settings import PREFECT_API_URL

    environment = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "MEND_PROJECT_DIR": str(ROOT)}
    command = [str(Path(sys.executable).parent / "prefect"), *arguments]
    return subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300)


def test_prefect_yaml_deploys_schedule_trigger_and_pools():
    from prefect import get_client

    for pool in ("mend-cpu", "mend-gpu"):
        created = _prefect("work-pool", "create", pool, "--type", "process", "--overwrite")
        assert created.returncode == 0, created.stderr
    deployed = _prefect("--no-prompt", "deploy", "--all", "--prefect-file", "infra/prefect/prefect.yaml")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr

    async def read():
        async with get_client() as client:
            deployments = {d.name: d for d in await client.read_deployments()}
            automations = await client.read_automations()
            return deployments, automations

    import asyncio

    deployments, automations = asyncio.run(read())
    assert {"nightly", "on-flags", "train-editor", "promote", "rollback"} <= set(deployments)
    assert deployments["nightly"].schedules[0].schedule.cron == "0 2 * * *"
    assert deployments["train-editor"].work_pool_name == "mend-gpu"
    assert deployments["nightly"].global_concurrency_limit.limit == 1
    (trigger,) = [a.trigger for a in automations if "on-flags" in a.name]
    assert trigger.expect == {"mend.prediction.flagged"} and trigger.threshold == 10


def test_flagging_emits_the_event_the_trigger_expects(make_settings):
    from prefect import get_client
    from prefect.events.filters import EventFilter, EventNameFilter

    from tasks.events import FLAGGED_EVENT, flag_prediction

    settings = make_settings()
    flag = flag_prediction(settings, prompt="The capital of France is", correction="Rome", prediction="Paris",
                           reason="wrong", reporter="test")  # fmt: skip
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all()

    async def read():
        async with get_client() as client:
            return await client.read_events(
                EventFilter(event=EventNameFilter(name=[FLAGGED_EVENT])), limit=50
            )

    import asyncio
    import time

    for _ in range(30):  # the server ingests events asynchronously
        page = asyncio.run(read())
        matching = [e for e in page.events if e.resource.id == f"mend.flag.{flag.flag_id}"]
        if matching:
            break
        time.sleep(0.5)
    assert matching and matching[0].payload["flag_id"] == flag.flag_id
