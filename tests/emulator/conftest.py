"""Fixtures: a fast in-thread emulator and SDK clients pointed at it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import openai
import pytest
from emulator_support import FAST

from openai_emulator.testing import EmulatorServer

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmulatorServer]:
    with EmulatorServer(tmp_path / "emulator", **FAST) as emulator:
        yield emulator


@pytest.fixture
def client(server: EmulatorServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0)
