"""What the results view shows for one input file, built from the files the pipeline writes.

No Airflow imports and no API calls: a finished file is read from its ``manifest.json``; a file
still running from its plan, the shards' state records and the last poll's progress record.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from openai_batch.layout import (
    MANIFEST_FILE,
    REJECTS_FILE,
    SERVED_FILES,
    progress_file_name,
    shard_state_file,
)

#: The files of a result folder the view links to (nothing else is served).
COUNT_KEYS = ("total", "succeeded", "failed", "expired", "cancelled", "rejected", "reused")
MAX_REJECTS = 5
#: How the view names each provider (see ``openai_batch.providers``).
PROVIDER_NAMES = {
    "openai": "OpenAI Batch API",
    "azure": "Azure OpenAI Batch",
    "anthropic": "Anthropic Message Batches",
}
#: Batch statuses after which a state record's counts are final (the last poll may be older).
ENDED = frozenset({"completed", "failed", "expired", "cancelled"})


@dataclass
class BatchRow:
    """One batch of a file: a shard's round."""

    shard: int
    round: int
    batch_id: str | None
    status: str | None
    request_counts: dict[str, Any] | None
    live: bool = False
    model: str | None = None  # the model (or deployment) of the shard
    priced_as: str | None = None  # the model an Azure deployment is priced as, when it differs


@dataclass
class FileView:
    """Everything the page shows for one input file."""

    index: int
    key: str
    state: str
    counts: dict[str, Any] = field(default_factory=dict)
    usage: dict[str, Any] = field(default_factory=dict)
    cost_usd: float | None = None
    cost_unknown_reason: str | None = None
    provider: str | None = None  # the API the file's batches went to: openai, azure or anthropic
    batches: list[BatchRow] = field(default_factory=list)
    rejects: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    error: str | None = None
    folder: str | None = None  # where the file's results are written


@dataclass
class ModelCapacity:
    """One model's enqueued tokens in flight against its limit."""

    model: str
    tokens: int
    limit: int | None
    batches: int
    waiting: int


@dataclass
class WaitingShard:
    """A shard round waiting for its model's enqueued-token capacity."""

    label: str
    model: str
    tokens: int
    waited_seconds: float
    key: str = ""  # the ledger key of the shard round (capacity.round_key)


@dataclass
class CapacityView:
    """The deployment's enqueued-token capacity: per model in use and limit, and who waits."""

    models: list[ModelCapacity] = field(default_factory=list)
    waiting: list[WaitingShard] = field(default_factory=list)
    note: str | None = None


def capacity_view(ledger: dict[str, Any], limits: dict[str, int], now: float) -> CapacityView:
    """
    Return the capacity view from the ledger's data and the per-model limits (``*``: any other).

    Every model with a batch in flight, a shard waiting or a limit of its own gets a row; stale
    entries (a lost task) are left out as the admission check leaves them out.
    """
    from openai_batch.budget import limit_for
    from openai_batch.capacity import capacity_summary

    summary = capacity_summary(ledger, now)
    names = sorted(set(summary["models"]) | {m for m in limits if m != "*"})
    models = []
    for name in names:
        row = summary["models"].get(name) or {"tokens": 0, "batches": 0, "waiting": 0}
        models.append(
            ModelCapacity(name, row["tokens"], limit_for(limits, name), row["batches"], row["waiting"])
        )
    waiting = [
        WaitingShard(
            str(e.get("label") or e["key"]),
            str(e["model"]),
            int(e["tokens"]),
            max(0.0, now - float(e["since"])),
            str(e["key"]),
        )
        for e in summary["waiting"]
    ]
    return CapacityView(models, waiting)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def local_folder(url: str) -> Path | None:
    """Return the local folder of a ``file://`` URL or plain path, None for object storage."""
    if url.startswith("file://"):
        return Path(url.removeprefix("file://"))
    if "://" in url:
        return None
    return Path(url)


def contained(root: Path, path: Path) -> bool:
    """Return whether ``path`` (links resolved) lies inside ``root`` (links resolved)."""
    try:
        path.resolve().relative_to(root.resolve())
    except (OSError, ValueError):
        return False
    return True


def open_served(root: Path, folder: Path, name: str) -> tuple[int, os.stat_result] | None:
    """
    Open ``folder/name`` for sending, or return None when it must not be sent.

    Walked down from the (resolved) root one name at a time with ``O_NOFOLLOW``, so no symbolic
    link below the root is followed, not even one pointing back inside it, and nothing can be
    swapped in between the check and the open. The file must be a regular file with one link
    (a hard link planted in a results folder would be another file's content). Returns the open
    descriptor (the caller closes it) and its ``fstat``.
    """
    real_root = root.resolve()
    rel: Path | None = None
    for base in (root, real_root):
        try:
            rel = folder.relative_to(base)
            break
        except ValueError:
            continue
    if rel is None or ".." in rel.parts or name in ("", ".", "..") or "/" in name:
        return None
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(real_root, flags | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        for part in rel.parts:
            child = os.open(part, flags | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        fh = os.open(name, flags | os.O_NONBLOCK, dir_fd=fd)
    except OSError:  # ELOOP for a link, ENOTDIR, ENOENT
        return None
    finally:
        os.close(fd)
    info = os.fstat(fh)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fh)
        return None
    return fh, info


def first_rejects(path: Path, limit: int = MAX_REJECTS) -> list[str]:
    """Return ``line N: reason`` for the first ``limit`` rejected lines in ``path``."""
    out: list[str] = []
    try:
        with path.open(encoding="utf-8", errors="replace") as fin:
            for line in fin:
                if len(out) >= limit:
                    break
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                out.append(f"line {row.get('line')}: {row.get('reason')}")
    except OSError:
        pass
    return out


WAITING_FOR_CAPACITY = "waiting for capacity"


def _live_rows(state_dir: Path, shards: list[dict[str, Any]], waiting: frozenset[str]) -> list[BatchRow]:
    """Return a row per round of each shard from its state record; ``waiting``: ledger keys that wait."""
    from openai_batch.capacity import round_key

    rows: list[BatchRow] = []
    for shard in shards:
        index = int(shard["index"])
        record = _read_json(state_dir / shard_state_file(index)) or {}
        if record.get("identity") != shard.get("identity"):
            waits = round_key(str(shard.get("identity")), 0, 0) in waiting
            status = WAITING_FOR_CAPACITY if waits else "not submitted"
            rows.append(BatchRow(index, 0, None, status, None, model=shard.get("model")))
            continue
        progress = _read_json(state_dir / progress_file_name(index)) or {}
        for rnd in record.get("rounds") or []:
            row = BatchRow(
                index,
                int(rnd.get("round", 0)),
                rnd.get("batch_id"),
                rnd.get("status"),
                rnd.get("request_counts"),
                model=record.get("model") or shard.get("model"),
            )
            ended = row.status in ENDED
            if not ended and row.batch_id and progress.get("batch_id") == row.batch_id:
                row.status, row.request_counts, row.live = (
                    progress.get("status"),
                    progress.get("request_counts"),
                    True,
                )
            elif row.status is None and not row.batch_id:
                key = round_key(str(record.get("identity")), row.round, int(rnd.get("attempt") or 0))
                row.status = WAITING_FOR_CAPACITY if key in waiting else "not submitted"
            elif row.status is None:
                row.status = "submitted"
            rows.append(row)
    return rows


def file_view(
    index: int, plan: dict[str, Any], results_root: Path, waiting: frozenset[str] = frozenset()
) -> FileView:
    """
    Return the view of one file from its plan (the ``prepare`` task's XCom).

    ``waiting``: the ledger keys of the shard rounds waiting for capacity (:class:`CapacityView`).
    """
    key = str(plan.get("key") or plan.get("source") or f"file {index}")
    out = local_folder(str(plan.get("out_dir") or ""))
    if out is None:
        return FileView(index, key, "on object storage", error="this view reads local results only")
    if not contained(results_root, out):
        return FileView(index, key, "unavailable", error="results are not under the results root")
    manifest = _read_json(out / MANIFEST_FILE)
    state_dir = local_folder(str(plan.get("state_dir") or ""))
    view = FileView(index, key, "running", error=plan.get("error"), folder=str(out))
    view.provider = plan.get("provider")
    view_skipped = "skipped (results exist for this content)"
    if plan.get("skipped"):
        view.state = view_skipped
    elif plan.get("dry_run"):
        view.state = "dry run"
    if isinstance(manifest, dict) and manifest.get("input_sha256") == plan.get("input_sha256"):
        view.state = "failed" if manifest.get("error") else "written"
        if plan.get("skipped"):  # the results shown are an earlier run's: say so
            since = manifest.get("run_id")
            view.state = f"skipped: results complete since run {since}" if since else view_skipped
        view.counts = dict(manifest.get("counts") or {})
        view.usage = dict(manifest.get("usage") or {})
        view.cost_usd = manifest.get("estimated_cost_usd")
        view.cost_unknown_reason = manifest.get("cost_unknown_reason")
        view.provider = manifest.get("provider") or view.provider
        view.error = manifest.get("error")
        first_shard = 1 if manifest.get("manifest_version", 1) >= 2 else 0  # BatchRow counts from 0
        view.batches = [
            BatchRow(
                int(b.get("shard", 0)) - first_shard,
                int(b.get("round", 0)),
                b.get("batch_id"),
                b.get("status"),
                b.get("request_counts"),
                model=b.get("model"),
                priced_as=b.get("priced_as") if b.get("priced_as") != b.get("model") else None,
            )
            for b in manifest.get("batches") or []
        ]
        view.files = [name for name in SERVED_FILES if (out / name).is_file()]
        view.rejects = first_rejects(out / REJECTS_FILE)
    elif state_dir is not None and contained(results_root, state_dir):
        view.counts = {
            "total": plan.get("lines"),
            "rejected": plan.get("rejected"),
            "reused": plan.get("reused"),
        }
        view.cost_usd = None
        view.batches = _live_rows(state_dir, list(plan.get("shards") or []), waiting)
        if view.state == "running" and any(b.status == WAITING_FOR_CAPACITY for b in view.batches):
            view.state = WAITING_FOR_CAPACITY
        view.rejects = first_rejects(state_dir / REJECTS_FILE)
    return view


def format_usd(amount: float | None) -> str:
    """Return dollars with enough digits for small batches (same rule as the task logs)."""
    from openai_batch.pricing import format_usd as fmt

    return fmt(amount)


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


STYLE = """
body{font-family:system-ui,sans-serif;margin:16px;color:#1a202c}
table{border-collapse:collapse;margin:6px 0 14px}
td,th{border:1px solid #cbd5e0;padding:3px 8px;text-align:right}
th{background:#edf2f7}td.l,th.l{text-align:left}h2{font-size:1.1em;margin:18px 0 4px}
.state{font-weight:normal;color:#4a5568}.bar{width:120px;height:10px;vertical-align:middle}
.err{color:#c53030}
"""
#: The one script of the pages. Airflow's UI shows them in a sandboxed iframe that may not navigate
#: the top window, so a link to one of Airflow's own pages (``target=_top``) cannot leave the frame by
#: itself. Framed by the UI (same origin), the click instead moves the UI's router: push the page on
#: the UI window's history and tell its router, as a Back or Forward would. Opened on its own, the
#: link navigates as usual. Nothing else runs.
SCRIPT = """
document.addEventListener("click", function (e) {
  var a = e.target.closest && e.target.closest("a[target=_top]");
  if (!a || window.parent === window || e.button !== 0 || e.ctrlKey || e.metaKey || e.shiftKey) return;
  var top;
  try { top = window.parent; if (top.location.origin !== location.origin) return; } catch (err) { return; }
  var url = new URL(a.href);
  if (url.origin !== location.origin) return;
  e.preventDefault();
  top.history.pushState(null, "", url.pathname + url.search + url.hash);
  top.dispatchEvent(new PopStateEvent("popstate", {state: null}));
});
"""


def _sha256(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


#: The pages' Content-Security-Policy: nothing but the one inline stylesheet and the one script above,
#: each allowed by its hash (no inline style attributes or handlers, no other origin). Framed only by
#: the API server's own pages: Airflow's UI shows these pages in an iframe of its run and DAG tabs.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; "
    f"style-src 'sha256-{_sha256(STYLE)}'; "
    f"script-src 'sha256-{_sha256(SCRIPT)}'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'self'"
)


def _progress(counts: dict[str, Any] | None) -> str:
    counts = counts or {}
    total = int(counts.get("total") or 0)
    done, failed = int(counts.get("completed") or 0), int(counts.get("failed") or 0)
    pct = 100.0 * (done + failed) / total if total else 0.0
    return (
        f'<span class="progress" data-done="{done}" data-total="{total}">{done}/{total} done, '
        f'{failed} failed ({pct:.0f}%)</span> <progress class="bar" max="100" value="{pct:.0f}"></progress>'
    )


def render_file(view: FileView, file_href: str) -> str:
    """Return the HTML section of one file; ``file_href`` is the link prefix for its files."""
    parts = [
        f'<section class="file" data-key="{_e(view.key)}">',
        f'<h2>{_e(view.key)} <span class="state">{_e(view.state)}</span></h2>',
    ]
    if view.error:
        parts.append(f'<p class="err">{_e(view.error)}</p>')
    if view.provider:
        parts.append(
            f'<p>API: <b class="provider">{_e(PROVIDER_NAMES.get(view.provider, view.provider))}</b></p>'
        )
    if view.counts:
        keys = [k for k in COUNT_KEYS if k in view.counts]
        parts.append(
            "<table class='counts'><tr>"
            + "".join(f"<th>{k}</th>" for k in keys)
            + "</tr><tr>"
            + "".join(f'<td data-count="{k}">{_e(view.counts[k])}</td>' for k in keys)
            + "</tr></table>"
        )
    if view.usage or view.state == "written":
        parts.append(
            f"<p>Tokens: {_e(view.usage.get('input_tokens', 0))} input, "
            f"{_e(view.usage.get('output_tokens', 0))} output, "
            f"{_e(view.usage.get('cached_tokens', 0))} cached."
            f' Estimated cost: <b class="cost">{_e(format_usd(view.cost_usd))}</b>'
            + (
                f' <span class="why">({_e(view.cost_unknown_reason)})</span>'
                if view.cost_unknown_reason
                else ""
            )
            + "</p>"
        )
    if view.batches:
        parts.append(
            "<table class='batches'><tr><th>shard</th><th class='l'>model</th><th>round</th>"
            "<th class='l'>batch</th><th class='l'>status</th><th class='l'>requests</th></tr>"
        )
        for b in view.batches:
            parts.append(
                f"<tr><td>{b.shard + 1}</td><td class='l batch-model'>{_e(b.model)}"
                + (f" <span class='why'>(deployment of {_e(b.priced_as)})</span>" if b.priced_as else "")
                + f"</td><td>{b.round}</td>"
                f"<td class='l'>{_e(b.batch_id)}</td>"
                f"<td class='l batch-status'>{_e(b.status)}{' (live)' if b.live else ''}</td>"
                f"<td class='l'>{_progress(b.request_counts)}</td></tr>"
            )
        parts.append("</table>")
    if view.rejects:
        parts.append(
            "<p>First rejects:</p><ul class='rejects'>"
            + "".join(f"<li>{_e(r)}</li>" for r in view.rejects)
            + "</ul>"
        )
    if view.folder and view.files:
        parts.append(f"<p class='folder'>Folder: <code>{_e(view.folder)}</code></p>")
    if view.files:
        parts.append(
            "<p>"
            + " · ".join(
                f'<a href="{file_href}/{quote(name)}" target="_blank">{_e(name)}</a>' for name in view.files
            )
            + "</p>"
        )
    parts.append("</section>")
    return "\n".join(parts)


def render_capacity(view: CapacityView) -> str:
    """Return the HTML section of the enqueued-token capacity (the whole deployment, every run)."""
    parts = ['<section class="capacity"><h2>Enqueued-token capacity <span class="state">all runs</span></h2>']
    if view.note:
        parts.append(f"<p>{_e(view.note)}</p>")
    if not view.models:
        parts.append("<p>No batch in flight and no limit set (Variable openai_batch_token_limits).</p>")
    else:
        parts.append(
            "<table class='capacity-models'><tr><th class='l'>model</th><th>enqueued tokens in use</th>"
            "<th>limit</th><th>batches in flight</th><th>shards waiting</th></tr>"
        )
        for m in view.models:
            limit = f"{m.limit:,}" if m.limit is not None else "no limit"
            parts.append(
                f'<tr data-model="{_e(m.model)}"><td class="l">{_e(m.model)}</td>'
                f'<td data-cap="tokens">{m.tokens:,}</td><td data-cap="limit">{limit}</td>'
                f'<td data-cap="batches">{m.batches}</td><td data-cap="waiting">{m.waiting}</td></tr>'
            )
        parts.append("</table>")
    if view.waiting:
        parts.append(
            "<p>Waiting for capacity (longest first):</p><table class='capacity-waiting'><tr>"
            "<th class='l'>shard</th><th class='l'>model</th><th>tokens</th><th>waiting for</th></tr>"
        )
        for w in view.waiting:
            parts.append(
                f"<tr><td class='l'>{_e(w.label)}</td><td class='l'>{_e(w.model)}</td>"
                f"<td>{w.tokens:,}</td><td>{w.waited_seconds:.0f} s</td></tr>"
            )
        parts.append("</table>")
    parts.append("</section>")
    return "\n".join(parts)


def render_page(title: str, body: str, refresh: int | None = None) -> str:
    """Return a whole HTML page."""
    meta = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
    return (
        f"<!doctype html><html><head><meta charset='utf-8'>{meta}<title>{_e(title)}</title>"
        f"<style>{STYLE}</style><script>{SCRIPT}</script></head>"
        f"<body><h1>{_e(title)}</h1>{body}</body></html>"
    )
