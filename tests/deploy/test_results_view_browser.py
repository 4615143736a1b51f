"""A real browser reads the results view: a finished run's tab, and a running batch's progress."""

from __future__ import annotations

import os
import re
import time
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.deploy.processes import http_json, wait_until
from tests.deploy.standalone import DAG_ID, StandaloneStack, standalone  # noqa: F401 - fixture
from tests.deploy.test_ui_browser import page, request_line  # noqa: F401 - fixture

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(600)]

DOCS = Path(__file__).resolve().parents[2] / "docs"
SHOTS = Path(os.environ.get("OPENAI_BATCH_SCREENSHOTS", "/tmp/openai-batch-screenshots"))
#: Set to 1 to refresh the README's screenshots in docs/ as well.
UPDATE_DOCS = os.environ.get("OPENAI_BATCH_UPDATE_DOCS") == "1"


def shot(browser_page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    browser_page.screenshot(path=str(SHOTS / name))
    if UPDATE_DOCS:
        browser_page.screenshot(path=str(DOCS / name))


def trigger(stack: StandaloneStack, pattern: str) -> str:
    conf = {"input": pattern, "poll_interval": 1, "settle_seconds": 0, "input_timeout": 120}
    run = http_json(f"{stack.api}/dags/{DAG_ID}/dagRuns", "POST", {"logical_date": None, "conf": conf})
    return str(run["dag_run_id"])


def quoted(run_id: str) -> str:
    return urllib.parse.quote(run_id, safe="")


def test_finished_run_tab_shows_each_files_counts_and_cost(standalone: StandaloneStack, page: Page) -> None:  # noqa: F811
    stack = standalone
    folder = stack.inbox / "viewed"
    folder.mkdir()
    (folder / "reviews.jsonl").write_text(
        "".join(request_line(f"r{i}", f"review {i}") + "\n" for i in range(4))
    )
    (folder / "tickets.jsonl").write_text(request_line("t1", "ticket") + "\n{not json\n")
    run_id = trigger(stack, "viewed/*.jsonl")
    ended = stack.wait_for_run(run_id, timeout=240)
    assert ended["state"] == "success", f"{stack.task_states(run_id)}\n{stack.logs()}"

    page.goto(f"{stack.url}/dags/{DAG_ID}/runs/{quoted(run_id)}/plugin/openai-batch-results")
    view = page.frame_locator("iframe")
    reviews = view.locator('section[data-key="viewed/reviews.jsonl"]')
    tickets = view.locator('section[data-key="viewed/tickets.jsonl"]')
    assert reviews.locator('td[data-count="succeeded"]').inner_text() == "4"
    assert reviews.locator('td[data-count="rejected"]').inner_text() == "0"
    assert tickets.locator('td[data-count="succeeded"]').inner_text() == "1"
    assert tickets.locator('td[data-count="rejected"]').inner_text() == "1"
    for section in (reviews, tickets):
        assert re.fullmatch(r"\$\d+\.\d+", section.locator(".cost").inner_text()), section.inner_html()
        assert section.locator(".batch-status").first.inner_text() == "completed"
    assert "line 2:" in tickets.locator(".rejects").inner_text()
    assert reviews.locator(".batch-model").first.inner_text() == "gpt-4o-mini"  # the model of each shard
    assert str(stack.results / "viewed" / "reviews") in reviews.locator(".folder").inner_text()
    shot(page, "results-view.png")

    # The link to a file opens it from the API server, read only.
    href = reviews.get_by_role("link", name="manifest.json").get_attribute("href")
    assert href is not None
    manifest = page.request.get(urllib.parse.urljoin(f"{stack.url}/openai-batch/runs/{DAG_ID}/x", href))
    assert manifest.ok
    assert manifest.json()["counts"]["succeeded"] == 4

    # write_results and wait_for_batch link to this view.
    for task_id in ("write_results", "wait_for_batch"):
        links = http_json(
            f"{stack.api}/dags/{DAG_ID}/dagRuns/{quoted(run_id)}/taskInstances/{task_id}/links?map_index=0"
        )
        assert links["extra_links"] == {"Batch results": f"/openai-batch/runs/{DAG_ID}/{quoted(run_id)}"}

    # The DAG's Batch runs tab: the run's line (files, outcomes, cost), the charts by model, and a
    # link to Airflow's own page of the run. Airflow frames plugin pages in a sandbox without top
    # navigation; inside the tab the page's script moves Airflow's router instead, so a click on the
    # link opens the run page in Airflow's UI. Opened on its own, the page's link navigates as usual.
    page.goto(f"{stack.url}/dags/{DAG_ID}/plugin/openai-batch-runs")
    runs = page.frame_locator("iframe")
    line = runs.locator(f"tr[data-run='{run_id}']")
    assert line.locator("td[data-count='succeeded']").inner_text() == "5"
    assert line.locator("td[data-count='rejected']").inner_text() == "1"
    assert re.fullmatch(r"\$\d+\.\d+", line.locator(".cost").inner_text())
    assert runs.locator("svg.chart").count() == 2
    assert runs.locator("svg.chart rect[data-model='gpt-4o-mini']").count() >= 1
    shot(page, "runs-view.png")
    href = line.get_by_role("link", name=run_id).get_attribute("href")
    assert href is not None
    target = urllib.parse.urljoin(f"{stack.url}/openai-batch/dags/{DAG_ID}", href)
    assert target == f"{stack.url}/dags/{DAG_ID}/runs/{quoted(run_id)}"
    line.get_by_role("link", name=run_id).click()
    page.wait_for_url(lambda url: f"/dags/{DAG_ID}/runs/" in url and "/plugin/" not in url, timeout=30_000)
    assert page.url == target
    page.get_by_text(run_id).first.wait_for()  # Airflow's run page
    assert page.frame_locator("iframe").locator(f"tr[data-run='{run_id}']").count() == 0
    shot(page, "runs-link-in-tab.png")
    page.goto(f"{stack.url}/openai-batch/dags/{DAG_ID}")
    page.locator(f"tr[data-run='{run_id}']").get_by_role("link", name=run_id).click()
    page.wait_for_url(lambda url: f"/dags/{DAG_ID}/runs/" in url and "/openai-batch/" not in url)
    page.get_by_text(run_id).first.wait_for()  # Airflow's run page
    shot(page, "runs-link.png")

    # The same files again: this run sends nothing, and its tab says so and names the run that wrote.
    again = trigger(stack, "viewed/*.jsonl")
    assert stack.wait_for_run(again, timeout=240)["state"] == "success", stack.task_states(again)
    page.goto(f"{stack.url}/dags/{DAG_ID}/runs/{quoted(again)}/plugin/openai-batch-results")
    skipped = page.frame_locator("iframe").locator('section[data-key="viewed/reviews.jsonl"] .state')
    assert skipped.inner_text() == f"skipped: results complete since run {run_id}"
    shot(page, "results-skipped.png")

    # A model with no batch price: its cost is unknown, and the tab says why.
    local = stack.inbox / "viewed-local"
    local.mkdir()
    line = request_line("l1", "local").replace('"gpt-4o-mini"', '"my-local-llama"')
    (local / "local.jsonl").write_text(line + "\n")
    unpriced = trigger(stack, "viewed-local/*.jsonl")
    assert stack.wait_for_run(unpriced, timeout=240)["state"] == "success", stack.task_states(unpriced)
    page.goto(f"{stack.url}/dags/{DAG_ID}/runs/{quoted(unpriced)}/plugin/openai-batch-results")
    section = page.frame_locator("iframe").locator('section[data-key="viewed-local/local.jsonl"]')
    assert section.locator(".cost").inner_text() == "unknown"
    assert section.locator(".why").inner_text() == (
        "(no batch price for model(s) my-local-llama in openai_batch.pricing.PRICES)"
    )

    # The grid's mapped tasks carry the file and shard labels.
    page.goto(f"{stack.url}/dags/{DAG_ID}/runs/{quoted(run_id)}/tasks/wait_for_batch/mapped")
    page.get_by_text("viewed/reviews.jsonl #1/1").first.wait_for()
    page.get_by_text("viewed/tickets.jsonl #1/1").first.wait_for()
    shot(page, "labelled-grid.png")


def test_running_batch_progress_changes_between_page_loads(standalone: StandaloneStack, page: Page) -> None:  # noqa: F811
    stack = standalone
    folder = stack.inbox / "slow"
    folder.mkdir()
    (folder / "slow.jsonl").write_text("".join(request_line(f"s{i}", f"slow {i}") + "\n" for i in range(40)))
    settings = stack.emulator.settings
    rate = settings.requests_per_second
    settings.requests_per_second = 3  # about 13 s for the batch, polled every second
    try:
        run_id = trigger(stack, "slow/*.jsonl")
        url = f"{stack.url}/openai-batch/runs/{DAG_ID}/{quoted(run_id)}"

        def live_done() -> int | None:
            page.goto(url)
            progress = page.locator("section .progress")
            status = page.locator("section .batch-status")
            if status.count() == 0 or "(live)" not in status.first.inner_text():
                return None  # not prepared or submitted yet, or no poll recorded yet
            done = int(progress.first.get_attribute("data-done") or 0)
            return done if 0 < done < 40 else None

        first = wait_until("a live progress record", live_done, 120, interval=0.5, alive=stack.group)
        shot(page, "progress-1.png")
        time.sleep(3)
        second = wait_until(
            "progress to move", lambda: (d := live_done()) and d > first and d, 30, interval=0.5
        )
        shot(page, "progress-2.png")
        assert second > first
    finally:
        settings.requests_per_second = rate
    ended = stack.wait_for_run(run_id, timeout=180)
    assert ended["state"] == "success", f"{stack.task_states(run_id)}\n{stack.logs()}"
    page.goto(url)
    assert page.locator('td[data-count="succeeded"]').inner_text() == "40"
