"""The approver's view in a real browser: a finished tiny-model fix run on a real `mlflow server`, its
registered version page and review page opened in headless Chromium (Debian's package, `make browser`),
the approval given through the UI's tag form, and `mend promote` honouring it.

Screenshots go to ``$MEND_TEST_ARTIFACTS/browser`` (default ``test-artifacts/browser``), for people to look at.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.paths import PROJECT
from tests.pipeline_fixtures import LENIENT

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.usefixtures("prefect_server"),
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="Debian's chromium is not installed: run `make browser`"
    ),
]


@pytest.fixture
def shots() -> Path:
    folder = Path(os.environ.get("MEND_TEST_ARTIFACTS") or PROJECT / "test-artifacts") / "browser"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's own sandbox refuses to start.
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield launched.new_context(viewport={"width": 1440, "height": 1700})
        launched.close()


@pytest.fixture
def fixed(server_tracking_uri, make_settings, monkeypatch, tmp_path):
    """A finished fix run of two flags on the tiny model, registered as version 2 on the server."""
    from flows.nightly_fix import nightly_fix
    from tests.flows.test_nightly_fix import PROMPTS, _flag

    settings = make_settings(thresholds=LENIENT, tracking_uri=server_tracking_uri,
                             registered_model=f"mend-browser-{uuid.uuid4().hex[:8]}")  # fmt: skip
    for name, value in {"MEND_STORE_URI": settings.store_uri, "MEND_REGISTERED_MODEL": settings.registered_model,
                        "MEND_BASE_MODEL": settings.base_model, "MEND_DATA_DIR": settings.data_dir,
                        "PREFECT_HOME": str(tmp_path / "prefect")}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    for case in PROMPTS:
        _flag(settings, *case, reporter="dana")
    summary = nightly_fix(overrides=settings.to_json())
    assert summary.candidate_version == "2"
    return settings


def test_an_approver_reads_the_candidate_in_mlflow_approves_it_there_and_promote_honours_it(
    fixed, browser, shots
):
    from flows.cli import app
    from flows.cli_pipeline import EXIT_REFUSED
    from tasks.registry import champion_version

    page = browser.new_page()
    page.goto(f"{fixed.tracking_uri}/#/models/{fixed.registered_model}/versions/2")
    page.get_by_text("Gate PASSED").first.wait_for(timeout=30_000)
    link = page.get_by_role("link", name="Open the review page")
    assert link.is_visible() and page.get_by_text("min_locality_unchanged").first.is_visible()
    page.screenshot(path=shots / "1-version-page.png", full_page=True)

    with browser.expect_page() as opened:  # the description's link opens the run's artifact viewer
        link.click()
    review = opened.value
    frame = review.frame_locator("iframe.mlflow-html-iframe")
    frame.locator("#verdict").wait_for(timeout=30_000)
    assert frame.locator("#verdict").inner_text() == "Gate PASSED"
    assert (
        frame.locator("#edits").is_visible() and frame.locator("#edits tr").count() == 1 + 2
    )  # header + edits
    assert frame.get_by_text("Harry Potter was written by").first.is_visible()
    review.screenshot(path=shots / "2-review-in-mlflow.png")

    refused = CliRunner().invoke(app, ["promote", "--version", "2"])
    assert refused.exit_code == EXIT_REFUSED and "not approved" in refused.output, refused.output

    # The approval, as a person gives it: the version page's tag form.
    page.bring_to_front()
    page.get_by_placeholder("Name").fill("approved_by")
    page.get_by_placeholder("Value").fill("alice")
    page.screenshot(path=shots / "3-approval-tag-form.png", full_page=True)
    page.get_by_role("button", name="Add", exact=True).last.click()
    page.get_by_role("cell", name="alice").wait_for(timeout=15_000)
    page.screenshot(path=shots / "4-approved.png", full_page=True)

    promoted = CliRunner().invoke(app, ["promote", "--version", "2"])
    assert promoted.exit_code == 0, promoted.output
    assert "champion is now version 2" in promoted.output and "promoted by alice" in promoted.output
    assert champion_version(fixed.registered_model, tracking_uri=fixed.tracking_uri) == "2"
    _review_page_is_whole_on_its_own(fixed, browser, shots)


def _review_page_is_whole_on_its_own(settings, browser, shots) -> None:
    """Opened as a file with every network request refused, the page still shows everything."""
    from tasks.storage import open_store

    store = open_store(settings.store_uri)
    (key,) = [key for key in store.list("runs/") if key.endswith("review/review.html")]
    refused: list[str] = []

    def local_only(route) -> None:
        if route.request.url.startswith(("file:", "data:")):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    page = browser.new_page()
    page.route("**/*", local_only)
    page.goto(Path(store.path(key)).as_uri())
    assert page.locator("#verdict").inner_text() == "Gate PASSED" and page.locator("#edits").is_visible()
    assert all(image.evaluate("i => i.naturalWidth > 0") for image in page.locator("img").all())
    assert refused == []
    page.screenshot(path=shots / "5-review-page.png", full_page=True)
