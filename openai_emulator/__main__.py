"""Command line: ``python -m openai_emulator --host 127.0.0.1 --port 8800 --data-dir DIR``."""

from __future__ import annotations

import logging

import uvicorn

from openai_emulator.server import create_app
from openai_emulator.settings import settings_from_args


def main(argv: list[str] | None = None) -> None:
    """Parse flags and serve until interrupted."""
    settings = settings_from_args(argv)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level, access_log=False)


if __name__ == "__main__":
    main()
