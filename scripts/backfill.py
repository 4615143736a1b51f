"""`make backfill FROM=YYYY-MM-DD TO=YYYY-MM-DD`: ask the running `make run` stack to backfill dates.

Goes through the Airflow REST API (``POST /api/v2/backfills``), as the UI's Backfill mode does; the
running scheduler then processes ``<inbox>/D/*.jsonl`` for each date D. (The ``airflow backfill``
CLI writes to the same SQLite file as the running scheduler and can fail with "database is locked".)
Dates whose partition holds no input end skipped at once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any

DAG_ID = "openai_batch"


def http_json(url: str, method: str = "GET", body: Any = None, timeout: float = 30.0) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


def _backfills(api: str, dag_id: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = http_json(f"{api}/backfills?dag_id={dag_id}&limit=100")["backfills"]
    return found


def _recorded(api: str, backfill_id: int, wait: float = 10.0) -> bool:
    deadline = time.monotonic() + wait
    while True:
        try:
            http_json(f"{api}/backfills/{backfill_id}")
            return True
        except urllib.error.HTTPError as err:
            if err.code != 404 and err.code < 500:
                raise
        if time.monotonic() > deadline:
            return False
        time.sleep(1)


def request_backfill(
    api: str,
    from_date: str,
    to_date: str,
    conf: dict[str, Any] | None = None,
    reprocess: str = "none",
    dag_id: str = DAG_ID,
    attempts: int = 10,
) -> dict[str, Any]:
    """
    Record a backfill and return it; safe to retry.

    An SQLite-backed API answers 5xx ("database is locked") while the scheduler writes; the call is
    then retried, unless the backfill was recorded after all; an answered id that never shows up
    (the commit failed after the answer) is asked for again. A 409 (the same backfill is already
    running, e.g. recorded by an attempt whose answer was lost) returns that backfill.
    """
    known = {b["id"] for b in _backfills(api, dag_id)}
    body = {
        "dag_id": dag_id,
        "from_date": f"{from_date}T00:00:00Z",
        "to_date": f"{to_date}T00:00:00Z",
        "reprocess_behavior": reprocess,
        "max_active_runs": 3,
        "dag_run_conf": conf or {},
    }
    for attempt in range(1, attempts + 1):
        try:
            created: dict[str, Any] = http_json(f"{api}/backfills", "POST", body)
            if _recorded(api, created["id"]):
                return created
            # SQLite can answer with the new id and then fail to commit it: ask again.
            print(f"backfill {created['id']} was answered but not recorded; retrying", file=sys.stderr)
        except urllib.error.HTTPError as err:
            detail = err.read()[:300]
            if err.code == 409:
                active = [b for b in _backfills(api, dag_id) if not b.get("completed_at")]
                if active:
                    return active[-1]
            if err.code < 500 or attempt == attempts:
                raise SystemExit(f"POST /backfills answered {err.code}: {detail!r}") from err
            print(f"POST /backfills answered {err.code}; retrying", file=sys.stderr)
        except urllib.error.URLError as err:
            raise SystemExit(f"no Airflow API at {api} ({err.reason}); is `make run` running?") from err
        time.sleep(3)
        new = [b for b in _backfills(api, dag_id) if b["id"] not in known]
        if new:
            return new[0]
    raise AssertionError("unreachable")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--from-date", required=True, help="first date, YYYY-MM-DD")
    parser.add_argument("--to-date", required=True, help="last date, YYYY-MM-DD")
    parser.add_argument(
        "--reprocess",
        default="none",
        choices=["none", "failed", "completed"],
        help="dates that already have a run: leave them (none), or run them again (failed / completed)",
    )
    parser.add_argument("--conf", default="{}", help="run conf (JSON), e.g. '{\"poll_interval\": 10}'")
    port = os.environ.get("OPENAI_BATCH_UI_PORT", "8080")
    parser.add_argument("--api", default=f"http://127.0.0.1:{port}/api/v2", help="Airflow REST API base URL")
    args = parser.parse_args()
    backfill = request_backfill(args.api, args.from_date, args.to_date, json.loads(args.conf), args.reprocess)
    print(
        f"backfill {backfill['id']} recorded for {args.from_date}..{args.to_date}; the scheduler runs it "
        f"(watch it at {args.api.rsplit('/api/', 1)[0]}/dags/{DAG_ID})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
