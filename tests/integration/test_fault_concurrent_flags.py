"""Ten `mend flag` processes writing at once to the S3 flag log: no flag is lost or duplicated."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_server")]
WRITERS = 10


def test_ten_concurrent_flag_writers_lose_and_duplicate_nothing(s3_server, s3_prefix_uri, tmp_path):
    from prefect.settings import PREFECT_API_URL

    from tasks.flags import read_flag_log
    from tasks.storage import open_store

    environment = {
        **os.environ, **s3_server.env(), "MEND_HOME": str(tmp_path / "home"), "MEND_STORE_URI": s3_prefix_uri,
        "PREFECT_API_URL": PREFECT_API_URL.value(), "MEND_REGISTERED_MODEL": "mend-concurrent",
    }  # fmt: skip
    mend = str(Path(sys.executable).parent / "mend")
    writers = [
        subprocess.Popen(
            [
                mend,
                "flag",
                "--prompt",
                f"The capital of country {n} is",
                "--correction",
                f"City {n}",
                "--prediction",
                "Paris",
                "--reporter",
                f"writer-{n}",
                "--model-version",
                "1",
            ],
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(WRITERS)
    ]
    outputs = [writer.communicate(timeout=300) for writer in writers]
    assert [writer.returncode for writer in writers] == [0] * WRITERS, [err[-2000:] for _, err in outputs]
    printed = {out.split()[-1] for out, _ in outputs}  # "flagged <id>"

    log = read_flag_log(open_store(s3_prefix_uri, s3_settings=s3_server.settings()))
    assert len(log.flags) == WRITERS and not log.malformed and not log.repeats
    assert {flag.flag_id for flag in log.flags} == printed
    assert sorted(flag.reporter for flag in log.flags) == sorted(f"writer-{n}" for n in range(WRITERS))
    assert len(log.source_keys) == WRITERS  # one object per append: no writer overwrote another
