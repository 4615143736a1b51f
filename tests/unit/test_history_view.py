"""The DAG's Batch runs tab: run lines from the write summaries, and cost and tokens per day and model."""

from __future__ import annotations

import datetime as dt

from openai_batch.ui.history import daily_by_model, render_charts, render_runs, summarize_run

TODAY = dt.date(2026, 12, 6)


def _summary(
    succeeded: int, rejected: int, cost: float | None, by_model: dict[str, tuple[int, int, float | None]]
) -> dict:
    return {
        "counts": {"succeeded": succeeded, "failed": 1, "expired": 0, "cancelled": 0, "rejected": rejected},
        "estimated_cost_usd": cost,
        "by_model": {
            m: {"input_tokens": i, "output_tokens": o, "cost_usd": c} for m, (i, o, c) in by_model.items()
        },
    }


def test_a_run_line_adds_up_its_files_and_links_to_airflows_run_page() -> None:
    run = summarize_run(
        "manual__x",
        "success",
        "manual",
        "2026-12-06 01:00:00",
        3,
        [_summary(2, 1, 0.5, {}), _summary(4, 0, 0.25, {})],
    )
    assert (run.files, run.written, run.counts["succeeded"], run.counts["rejected"]) == (3, 2, 6, 1)
    assert run.cost_usd == 0.75
    html = render_runs("openai_batch", [run])
    assert "<a target='_top' href='../../dags/openai_batch/runs/manual__x'>manual__x</a>" in html
    assert "<td data-count='failed'>2</td>" in html
    assert "<td class='cost'>$0.75</td>" in html
    unknown = summarize_run("r", "success", "manual", "", 1, [_summary(1, 0, None, {})])
    assert unknown.cost_usd is None  # one file of unknown cost makes the run's cost unknown


def test_cost_and_tokens_per_day_and_model_over_the_last_30_days() -> None:
    rows = [
        ("2026-12-06", _summary(1, 0, 0.3, {"gpt-4o-mini": (100, 20, 0.1), "gpt-4o": (10, 5, 0.2)})),
        ("2026-12-06", _summary(1, 0, 0.1, {"gpt-4o-mini": (50, 0, 0.1)})),
        ("2026-12-01", _summary(1, 0, None, {"my-llama": (7, 3, None)})),
        ("2026-10-01", _summary(1, 0, 9.0, {"gpt-4o": (999, 999, 9.0)})),  # older than 30 days
    ]
    daily = daily_by_model(rows, TODAY)
    assert len(daily) == 30
    assert min(daily) == "2026-11-07"
    assert daily["2026-12-06"]["gpt-4o-mini"] == {"cost_usd": 0.2, "tokens": 170.0, "unpriced": 0.0}
    assert daily["2026-12-06"]["gpt-4o"]["tokens"] == 15.0
    assert daily["2026-12-01"]["my-llama"]["unpriced"] == 1.0
    html = render_charts(daily)
    assert html.count("<svg class='chart'") == 2
    assert "data-day='2026-12-06' data-model='gpt-4o-mini' data-value='170'" in html
    assert "data-day='2026-12-06' data-model='gpt-4o' data-value='0.2'" in html
    assert "No batch price for my-llama" in html
    assert "999" not in html
    assert "No results written" in render_charts(daily_by_model([], TODAY))
