"""Process-wide state of one emulator: settings, store, faults, counters and webhook deliveries."""

from __future__ import annotations

import random
import threading
from collections import Counter
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from openai_emulator.settings import FaultConfig
from openai_emulator.store import Store
from openai_emulator.webhook_delivery import WebhookDispatcher

if TYPE_CHECKING:
    from collections.abc import Iterator

    from openai_emulator.settings import EmulatorSettings


class Stats:
    """Counters reported by ``GET /_emulator/stats``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters: Counter[str] = Counter()
        self.routes: Counter[str] = Counter()

    def incr(self, name: str, amount: int = 1) -> None:
        """Add to a counter."""
        with self._lock:
            self.counters[name] += amount

    def high_water(self, name: str, value: int) -> None:
        """Raise a counter to ``value`` if it is higher (a most-ever mark)."""
        with self._lock:
            if value > self.counters[name]:
                self.counters[name] = value

    @contextmanager
    def in_flight(self, name: str) -> Iterator[None]:
        """Count a call in ``name`` while the block runs: ``<name>_max`` the most at once, ``_total`` all."""
        with self._lock:
            self.counters[name] += 1
            self.counters[f"{name}_total"] += 1
            self.counters[f"{name}_max"] = max(self.counters[f"{name}_max"], self.counters[name])
        try:
            yield
        finally:
            with self._lock:
                self.counters[name] -= 1

    def route(self, key: str) -> None:
        """Count one API call of a route."""
        with self._lock:
            self.routes[key] += 1
            self.counters["requests_total"] += 1

    def reset(self) -> None:
        """Zero every counter."""
        with self._lock:
            self.counters.clear()
            self.routes.clear()

    def snapshot(self) -> dict[str, Any]:
        """Return the counters as JSON-ready data."""
        with self._lock:
            return {**dict(self.counters), "requests_by_route": dict(self.routes)}


class EmulatorState:
    """Everything the routes and the worker share.

    :param settings: start-up settings.
    """

    def __init__(self, settings: EmulatorSettings) -> None:
        self.settings = settings
        self.store = Store(settings.data_dir)
        self.faults: FaultConfig = FaultConfig(**settings.faults.to_dict())
        self.stats = Stats()
        self.rng = random.Random(self.faults.seed)
        self.webhooks = WebhookDispatcher(self)

    def set_faults(self, changes: dict[str, Any]) -> FaultConfig:
        """Apply fault changes and return the new configuration."""
        self.faults = self.faults.updated(changes)
        if "seed" in changes:
            self.rng.seed(self.faults.seed)
        return self.faults

    def clear_faults(self) -> FaultConfig:
        """Switch every fault off."""
        self.faults = FaultConfig(seed=self.faults.seed)
        return self.faults
