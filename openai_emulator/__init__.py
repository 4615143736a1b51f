"""A local HTTP server that speaks the OpenAI Files and Batches API, for tests and local models."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
