"""API errors in OpenAI's error envelope."""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    """Raise when a request must be answered with an OpenAI error envelope.

    :param status_code: HTTP status code.
    :param message: human-readable message.
    :param type: error type, e.g. ``invalid_request_error``.
    :param param: the offending parameter, if any.
    :param code: machine-readable error code, if any.
    """

    def __init__(
        self,
        status_code: int,
        message: str,
        type: str = "invalid_request_error",  # noqa: A002 - the envelope's field name
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def envelope(self) -> dict[str, Any]:
        """Return the JSON body the API sends for this error."""
        return error_envelope(self.message, self.type, self.param, self.code)


def error_envelope(message: str, type: str, param: str | None, code: str | None) -> dict[str, Any]:  # noqa: A002
    """Return ``{"error": {...}}`` as the OpenAI API shapes it."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str | None = "invalid_value") -> APIError:
    """Return a 400 error."""
    return APIError(400, message, "invalid_request_error", param, code)


def not_found(message: str, param: str | None = "id") -> APIError:
    """Return a 404 error."""
    return APIError(404, message, "invalid_request_error", param, None)


def error_type_for(status_code: int) -> str:
    """Return the error type OpenAI uses for a status code."""
    if status_code == 401:
        return "invalid_request_error"
    if status_code == 429:
        return "rate_limit_exceeded"
    if status_code >= 500:
        return "server_error"
    return "invalid_request_error"
