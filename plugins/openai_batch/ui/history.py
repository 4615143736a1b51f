"""The DAG's "Batch runs" tab: a line per recent run, and cost and tokens per day and model as charts.

Built from what the runs' ``write_results`` tasks returned (the manifest summary of each file they
wrote, with its ``by_model`` usage) and how many files their ``prepare`` tasks planned. Pure
rendering: no Airflow, no I/O; the page's data is read in :mod:`openai_batch.ui.app`.
"""

from __future__ import annotations

import datetime as dt
import html
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from openai_batch.pricing import format_usd

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["DAYS", "RunSummary", "daily_by_model", "render_charts", "render_runs", "summarize_run"]

#: Days the charts cover, today included.
DAYS = 30
#: Colours of the models in the charts (the legend names them), in order of first appearance.
_COLOURS = ("#3182ce", "#dd6b20", "#38a169", "#805ad5", "#d53f8c", "#319795", "#d69e2e", "#718096")


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


@dataclass
class RunSummary:
    """One run as the tab lists it."""

    run_id: str
    state: str
    run_type: str
    run_after: str
    files: int  # files its prepare tasks planned
    written: int  # files it wrote results for
    counts: dict[str, int] = field(default_factory=dict)
    cost_usd: float | None = 0.0  # None when a written file's cost is unknown


def summarize_run(
    run_id: str, state: str, run_type: str, run_after: str, files: int, summaries: Iterable[dict[str, Any]]
) -> RunSummary:
    """Add up the file summaries ``write_results`` returned for one run."""
    run = RunSummary(run_id, state, run_type, run_after, files, 0)
    for summary in summaries:
        run.written += 1
        for key in ("succeeded", "failed", "expired", "cancelled", "rejected"):
            run.counts[key] = run.counts.get(key, 0) + int((summary.get("counts") or {}).get(key) or 0)
        cost = summary.get("estimated_cost_usd")
        run.cost_usd = None if run.cost_usd is None or cost is None else run.cost_usd + float(cost)
    return run


def daily_by_model(
    rows: Iterable[tuple[str, dict[str, Any]]], today: dt.date, days: int = DAYS
) -> dict[str, dict[str, dict[str, float]]]:
    """
    Return ``{day: {model: {"cost_usd", "tokens"}}}`` for the ``days`` days up to ``today``.

    ``rows`` are ``(YYYY-MM-DD, write summary)``; a summary's ``by_model`` gives each model's tokens
    (input plus output) and cost (an unknown cost counts as 0 and the model is marked unpriced).
    """
    first = today - dt.timedelta(days=days - 1)
    out: dict[str, dict[str, dict[str, float]]] = {
        (first + dt.timedelta(days=i)).isoformat(): {} for i in range(days)
    }
    for day, summary in rows:
        if day not in out:
            continue
        for model, used in (summary.get("by_model") or {}).items():
            cell = out[day].setdefault(model, {"cost_usd": 0.0, "tokens": 0.0, "unpriced": 0.0})
            cell["tokens"] += float(used.get("input_tokens") or 0) + float(used.get("output_tokens") or 0)
            cost = used.get("cost_usd")
            if cost is None:
                cell["unpriced"] = 1.0
            else:
                cell["cost_usd"] += float(cost)
    return out


def render_runs(dag_id: str, runs: list[RunSummary]) -> str:
    """Return the table of runs: each links to Airflow's run page and to its Batch results tab."""
    head = (
        "<tr><th class='l'>run</th><th class='l'>type</th><th class='l'>state</th>"
        "<th class='l'>run after</th><th>files</th><th>written</th><th>succeeded</th><th>failed</th>"
        "<th>rejected</th><th>cost</th>"
        "<th class='l'>results</th></tr>"
    )
    rows = []
    for run in runs:
        failed = sum(run.counts.get(k, 0) for k in ("failed", "expired", "cancelled"))
        airflow_page = f"../../dags/{quote(dag_id, safe='')}/runs/{quote(run.run_id, safe='')}"
        results_tab = f"../runs/{quote(dag_id, safe='')}/{quote(run.run_id, safe='')}"
        rows.append(
            f"<tr data-run='{_e(run.run_id)}'>"
            f"<td class='l'><a target='_top' href='{_e(airflow_page)}'>{_e(run.run_id)}</a></td>"
            f"<td class='l'>{_e(run.run_type)}</td><td class='l'>{_e(run.state)}</td>"
            f"<td class='l'>{_e(run.run_after)}</td><td>{run.files}</td><td>{run.written}</td>"
            f"<td data-count='succeeded'>{run.counts.get('succeeded', 0)}</td>"
            f"<td data-count='failed'>{failed}</td>"
            f"<td data-count='rejected'>{run.counts.get('rejected', 0)}</td>"
            f"<td class='cost'>{_e(format_usd(run.cost_usd) if run.written else '-')}</td>"
            f"<td class='l'><a href='{_e(results_tab)}'>files</a></td></tr>"
        )
    return f"<table class='runs'>{head}{''.join(rows)}</table>"


def _bars(daily: dict[str, dict[str, dict[str, float]]], metric: str, title: str, fmt: Any) -> str:
    models = sorted({m for cells in daily.values() for m in cells})
    colour = {m: _COLOURS[i % len(_COLOURS)] for i, m in enumerate(models)}
    totals = {day: sum(c[metric] for c in cells.values()) for day, cells in daily.items()}
    top = max(totals.values(), default=0.0) or 1.0
    width, height, bar = 12 * len(daily) + 40, 120, 10
    parts = [
        f"<svg class='chart' data-metric='{metric}' width='{width}' height='{height + 30}' "
        f"role='img' aria-label='{_e(title)}'><title>{_e(title)}</title>",
        f"<line x1='30' y1='{height}' x2='{width}' y2='{height}' stroke='#a0aec0'/>",
        f"<text x='0' y='10' font-size='9'>{_e(fmt(top))}</text>",
    ]
    for i, (day, cells) in enumerate(daily.items()):
        x, y = 32 + 12 * i, float(height)
        for model in models:
            value = cells.get(model, {}).get(metric, 0.0)
            if value <= 0:
                continue
            h = max(1.0, (height - 10) * value / top)
            y -= h
            parts.append(
                f"<rect x='{x}' y='{y:.1f}' width='{bar}' height='{h:.1f}' fill='{colour[model]}' "
                f"data-day='{day}' data-model='{_e(model)}' data-value='{value:g}'>"
                f"<title>{_e(day)} {_e(model)}: {_e(fmt(value))}</title></rect>"
            )
        if (i % 7 == 0 and len(daily) - 1 - i >= 4) or i == len(daily) - 1:  # no two labels overlap
            parts.append(f"<text x='{x - 6}' y='{height + 12}' font-size='8'>{_e(day[5:])}</text>")
    legend_x = 32
    for model in models:
        parts.append(f"<rect x='{legend_x}' y='{height + 18}' width='8' height='8' fill='{colour[model]}'/>")
        parts.append(f"<text x='{legend_x + 11}' y='{height + 26}' font-size='9'>{_e(model)}</text>")
        legend_x += 14 + 6 * len(model)
    parts.append("</svg>")
    return "".join(parts)


def render_charts(daily: dict[str, dict[str, dict[str, float]]]) -> str:
    """Return the two charts (cost and tokens per day, stacked by model) and the totals per model."""
    if not any(daily.values()):
        return f"<p>No results written in the last {len(daily)} days.</p>"
    unpriced = sorted({m for cells in daily.values() for m, c in cells.items() if c.get("unpriced")})
    note = (
        f"<p class='err'>No batch price for {_e(', '.join(unpriced))}: counted as $0 in the cost chart.</p>"
        if unpriced
        else ""
    )
    totals: dict[str, dict[str, float]] = {}
    for cells in daily.values():
        for model, cell in cells.items():
            total = totals.setdefault(model, {"cost_usd": 0.0, "tokens": 0.0})
            total["cost_usd"] += cell["cost_usd"]
            total["tokens"] += cell["tokens"]
    table = (
        "<table class='models'><tr><th class='l'>model</th><th>tokens</th><th>cost</th></tr>"
        + "".join(
            f"<tr><td class='l'>{_e(m)}</td><td>{int(t['tokens'])}</td>"
            f"<td>{_e(format_usd(t['cost_usd']))}</td></tr>"
            for m, t in sorted(totals.items())
        )
        + "</table>"
    )
    return (
        f"<h2>Last {len(daily)} days, by model</h2>"
        + _bars(daily, "cost_usd", "Cost per day (USD)", format_usd)
        + _bars(daily, "tokens", "Tokens per day (input + output)", lambda v: f"{int(v)}")
        + note
        + table
    )
