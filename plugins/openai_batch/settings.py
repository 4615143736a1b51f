"""The deployment's settings: every Airflow Variable the pipeline reads, with its default, in one place.

The DAG renders them into its tasks' templated fields (:func:`template`), so a Variable changed in
the UI takes effect at the next run; the results view reads the same Variables through
:func:`value`, so both always agree on where the results and the ledger are.

Pure: standard library only (the Variable lookup is passed in by the caller).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

#: The project's root folder (``dags/`` and ``plugins/`` live in it): the defaults' data folder.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = PROJECT_ROOT / "data"

#: Folder under the results root that holds the ledger when ``openai_batch_ledger_dir`` is empty.
LEDGER_FOLDER = "_ledger"


@dataclass(frozen=True)
class Setting:
    """
    One Airflow Variable.

    :param variable: The Variable's key.
    :param default: Its value when unset, as the DAG's templates render it (a string, or an int).
    :param help: What it controls, in one line.
    """

    variable: str
    default: str | int
    help: str


INBOX = Setting("openai_batch_inbox", str(DATA_DIR / "inbox"), "folder or URL the input files land in")
RESULTS = Setting("openai_batch_results", str(DATA_DIR / "results"), "folder or URL results are written to")
ALLOWED_ROOTS = Setting(
    "openai_batch_allowed_roots", "", "comma-separated roots an `input` param may point into (and the inbox)"
)
LEDGER_DIR = Setting(
    "openai_batch_ledger_dir", "", f"capacity and spend ledger folder (empty: <results>/{LEDGER_FOLDER})"
)
TOKEN_LIMITS = Setting("openai_batch_token_limits", "", "enqueued-token limit per model (JSON object)")
DAILY_BUDGET = Setting("openai_batch_daily_budget_usd", "", "most US dollars spent per UTC day; empty: none")
CAPACITY_POLL = Setting("openai_batch_capacity_poll", 30, "seconds between two checks for free capacity")
REUSE_IDENTICAL = Setting(
    "openai_batch_reuse_identical", "", "true: answer an identical request from an earlier answer"
)
MAX_INPUT_BYTES = Setting(
    "openai_batch_max_input_bytes", "", "cap on a .jsonl.gz's decompressed size in bytes; empty: 100 GiB"
)

WATCH_INBOX = Setting(
    "openai_batch_watch_inbox",
    "true",
    "false: a file that lands starts no run (schedule and manual runs still do)",
)
WEBHOOK_CONN = Setting(
    "openai_batch_webhook_conn_id",
    "openai_default",
    "connection whose extra `webhook_secret` verifies OpenAI's webhooks (else OPENAI_WEBHOOK_SECRET)",
)

#: Every Variable the pipeline reads.
ALL: tuple[Setting, ...] = (
    INBOX,
    RESULTS,
    ALLOWED_ROOTS,
    LEDGER_DIR,
    TOKEN_LIMITS,
    DAILY_BUDGET,
    CAPACITY_POLL,
    REUSE_IDENTICAL,
    MAX_INPUT_BYTES,
    WATCH_INBOX,
    WEBHOOK_CONN,
)


def _lookup(setting: Setting) -> str:
    return f"var.value.get('{setting.variable}', {setting.default!r})"


def template(setting: Setting) -> str:
    """Return the Jinja expression a templated field uses to read ``setting`` at run time."""
    return "{{ " + _lookup(setting) + " }}"


def ledger_template() -> str:
    """The ledger folder as a template: the Variable, or ``<results>/_ledger`` when it is empty."""
    return "{{ " + f"{_lookup(LEDGER_DIR)} or ({_lookup(RESULTS)} ~ '/{LEDGER_FOLDER}')" + " }}"


def value(setting: Setting, get: Callable[[str], str | None]) -> str:
    """Return the setting's value from ``get`` (e.g. ``Variable.get``), or its default when unset or empty."""
    found = get(setting.variable)
    return found if found else str(setting.default)


def is_on(setting: Setting, get: Callable[[str], str | None]) -> bool:
    """Return a yes/no setting's value: anything but ``false``, ``0``, ``no`` or ``off`` is yes."""
    return value(setting, get).strip().lower() not in ("false", "0", "no", "off")


def ledger_folder(get: Callable[[str], str | None]) -> str:
    """Return the ledger folder as the DAG's :func:`ledger_template` renders it."""
    return value(LEDGER_DIR, get) or f"{value(RESULTS, get)}/{LEDGER_FOLDER}"
