"""A real browser triggers ``openai_batch`` from the Airflow UI's Trigger form, without a logical date."""

from __future__ import annotations

import json
import os
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.deploy.processes import http_json, wait_until
from tests.deploy.standalone import DAG_ID, StandaloneStack, standalone  # noqa: F401 - fixture

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(600)]

CHROMIUM = Path(os.environ.get("OPENAI_BATCH_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _unavailable(reason: str) -> None:
    if os.environ.get("OPENAI_BATCH_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason} (OPENAI_BATCH_REQUIRE_SERVICES=1, so this fails instead of skipping)")
    pytest.skip(reason)


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Any]:
    """A page of headless Debian Chromium, driven by Playwright."""
    if not CHROMIUM.exists():
        _unavailable(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            context.set_default_timeout(30_000)
            yield context.new_page()
        finally:
            browser.close()


def request_line(custom_id: str, text: str) -> str:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})


def _manual_runs(stack: StandaloneStack) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = http_json(f"{stack.api}/dags/{DAG_ID}/dagRuns?run_type=manual&limit=50")[
        "dag_runs"
    ]
    return runs


def test_trigger_form_runs_the_dag(standalone: StandaloneStack, page: Any, tmp_path: Path) -> None:  # noqa: F811
    stack = standalone
    # Dropped straight into the inbox, as the seed script's users do; the form's input stays empty.
    (stack.inbox / "from_ui.jsonl").write_text(
        request_line("ui-1", "hello from the form") + "\n" + request_line("ui-2", "second") + "\n"
    )
    before = {r["dag_run_id"] for r in _manual_runs(stack)}

    page.goto(f"{stack.url}/dags/{DAG_ID}")
    page.get_by_test_id("trigger-dag-button").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Run Parameters").wait_for()

    # The form pre-fills a logical date (today); a person leaves it. The run must still take the
    # inbox's *.jsonl, not wait on <inbox>/<today>/.
    dialog.locator('input[name="element_poll_interval"]').fill("1")
    dialog.locator('input[name="element_input_timeout"]').fill("120")
    dialog.locator('input[name="element_settle_seconds"]').fill("0")
    dialog.locator('input[name="element_poll_interval"]').click()
    page.screenshot(path=str(tmp_path / "trigger-form.png"), full_page=True)
    dialog.get_by_test_id("trigger-dag-submit").click()
    dialog.wait_for(state="hidden")

    def triggered() -> dict[str, Any] | None:
        return next((r for r in _manual_runs(stack) if r["dag_run_id"] not in before), None)

    run = wait_until("the run triggered from the form", triggered, 60, alive=stack.group)
    assert run["logical_date"] is not None, run  # the pre-filled date was kept
    assert run["conf"]["poll_interval"] == 1, run["conf"]
    assert not run["conf"].get("input"), run["conf"]

    ended = stack.wait_for_run(run["dag_run_id"], timeout=240)
    assert ended["state"] == "success", f"{stack.task_states(run['dag_run_id'])}\n{stack.logs()}"

    manifests = list(stack.results.glob("from_ui/manifest.json"))  # <results>/<path in the inbox>
    assert len(manifests) == 1, manifests
    manifest = json.loads(manifests[0].read_text())
    assert manifest["counts"]["succeeded"] == 2, manifest
    assert manifest["input"].endswith("/from_ui.jsonl")
    results = [json.loads(x) for x in (manifests[0].parent / "results.jsonl").read_text().splitlines()]
    assert [r["custom_id"] for r in results] == ["ui-1", "ui-2"]

    # The run's page shows it as successful.
    run_id = urllib.parse.quote(run["dag_run_id"], safe="")
    page.goto(f"{stack.url}/dags/{DAG_ID}/runs/{run_id}")
    page.get_by_text("success").first.wait_for()
    page.screenshot(path=str(tmp_path / "run.png"), full_page=True)
    assert (tmp_path / "trigger-form.png").stat().st_size > 0
    print(f"screenshots: {tmp_path}")
