"""
The ``airflow`` command of `make run`: Airflow's own CLI, with every server bound to 127.0.0.1.

Airflow 3.3's log servers (``[logging] worker_log_server_port`` of the scheduler,
``trigger_log_server_port`` of the triggerer) listen on every interface and have no host
setting. `make run` promises 127.0.0.1 only, so this entry point wraps ``uvicorn.run`` before
Airflow starts: a server asked for every interface (``""``, ``0.0.0.0``, ``::``) gets
:data:`LOCAL_HOST` instead; an explicit host (the API server's ``127.0.0.1``) is left alone.
``scripts/run_local.py`` puts a small ``airflow`` script that runs this first on PATH, so
``airflow standalone`` starts its parts through it too.
"""

from __future__ import annotations

import sys
from typing import Any

LOCAL_HOST = "127.0.0.1"
#: What a server asks for when it means every interface.
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]"})


def bind_local() -> None:
    """Make ``uvicorn.run`` bind every-interface servers to :data:`LOCAL_HOST` (here and in forks)."""
    import uvicorn

    real = uvicorn.run
    if getattr(real, "binds_local", False):
        return

    def run(app: Any, **kwargs: Any) -> None:
        if str(kwargs.get("host", "")) in WILDCARD_HOSTS:
            kwargs["host"] = LOCAL_HOST
        real(app, **kwargs)

    run.binds_local = True  # type: ignore[attr-defined]
    uvicorn.run = run


def main() -> int:
    """Run Airflow's CLI with :func:`bind_local` in force."""
    bind_local()
    from airflow.__main__ import main as airflow_main

    airflow_main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
