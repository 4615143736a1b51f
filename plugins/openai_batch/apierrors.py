"""The decorator that maps API errors raised by a task method to the project's own, keyless errors."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["maps_api_errors"]

_T = TypeVar("_T")


def maps_api_errors(method: Callable[..., _T]) -> Callable[..., _T]:
    """
    Decorate an operator method so that the API errors it raises carry no key and no header.

    See ``openai_batch.hooks.api_errors`` (imported when the method runs, not when a DAG is parsed).
    """

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> _T:
        from openai_batch.hooks import api_errors

        with api_errors(str(self.conn_id)):
            return method(self, *args, **kwargs)

    return wrapper
