"""Streaming validation of batch input files, line by line, as the service does before running a batch."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

BOM = b"\xef\xbb\xbf"
MAX_REPORTED_ERRORS = 100
REQUIRED_LINE_FIELDS = ("custom_id", "method", "url", "body")
# The body fields each endpoint needs besides ``model`` (the request schemas' ``required`` lists).
REQUIRED_BODY_FIELDS: dict[str, tuple[str, ...]] = {
    "/v1/chat/completions": ("messages",),
    "/v1/embeddings": ("input",),
    "/v1/completions": ("prompt",),
    "/v1/responses": ("input",),
    "/v1/moderations": ("input",),
    "/v1/images/generations": ("prompt",),
    "/v1/images/edits": ("images", "prompt"),
    "/v1/videos": ("prompt",),
}
# Endpoints whose model has a default in the spec (moderations, dall-e-2, gpt-image-1.5, sora-2).
MODEL_OPTIONAL = frozenset({"/v1/moderations", "/v1/images/generations", "/v1/images/edits", "/v1/videos"})
# A dated snapshot of a model: ``gpt-4o-2024-08-06`` or ``gpt-3.5-turbo-0125``.
SNAPSHOT = re.compile(r"^(?P<base>.+)-(?:\d{4}-\d{2}-\d{2}|\d{4})$")


def is_known_model(model: str, models: frozenset[str]) -> bool:
    """Return True when ``model`` is one of ``models`` or a dated snapshot of one."""
    if model in models:
        return True
    snapshot = SNAPSHOT.match(model)
    return snapshot is not None and snapshot.group("base") in models


@dataclass
class ValidationResult:
    """What validation found: errors (empty if the file is good), request count, model, token estimate."""

    errors: list[dict[str, Any]] = field(default_factory=list)
    total: int = 0
    embedding_inputs: int = 0
    model: str | None = None
    estimated_tokens: int = 0

    def add(self, code: str, message: str, param: str | None, line: int | None) -> None:
        """Record one error, up to a cap."""
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append({"code": code, "message": message, "param": param, "line": line})


def estimate_tokens(text_length: int) -> int:
    """Estimate tokens from a length in characters (about four characters per token)."""
    return max(1, (text_length + 3) // 4)


def count_embedding_inputs(value: Any) -> int:
    """Return how many inputs an embeddings ``input`` holds: a string or one token array is one."""
    if isinstance(value, list) and value and not all(isinstance(v, int) for v in value):
        return len(value)
    return 1


def iter_request_lines(path: Path, offset: int = 0) -> Any:
    """Yield ``(end_offset, raw_line)`` for each non-blank line from ``offset`` on, reading from disk."""
    with path.open("rb") as handle:
        handle.seek(offset)
        position = offset
        for raw in handle:
            position += len(raw)
            if raw.strip():
                yield position, raw


def _check_line(
    data: Any,
    line_no: int,
    endpoint: str,
    seen: set[str],
    models: frozenset[str] | None,
    result: ValidationResult,
    url_aliases: Mapping[str, str] | None = None,
) -> None:
    if not isinstance(data, dict):
        result.add("invalid_json_line", "This line is not a JSON object.", None, line_no)
        return
    for name in REQUIRED_LINE_FIELDS:
        if name not in data or data[name] is None:
            result.add("missing_required_parameter", f"Missing required parameter: '{name}'.", name, line_no)
            return
    custom_id = data["custom_id"]
    if not isinstance(custom_id, str):
        result.add("invalid_request", "custom_id must be a string.", "custom_id", line_no)
        return
    if custom_id in seen:
        result.add("duplicate_custom_id", f"The custom_id '{custom_id}' is duplicated.", "custom_id", line_no)
        return
    seen.add(custom_id)
    if data["method"] != "POST":
        result.add("invalid_request", "Only the POST method is supported.", "method", line_no)
        return
    url = data["url"]
    if url_aliases is not None and isinstance(url, str):
        url = url_aliases.get(url, url)
    if url != endpoint:
        message = f"The url '{data['url']}' does not match the batch endpoint '{endpoint}'."
        result.add("invalid_url", message, "url", line_no)
        return
    _check_body(data["body"], line_no, endpoint, models, result)


def _check_body(
    body: Any, line_no: int, endpoint: str, models: frozenset[str] | None, result: ValidationResult
) -> None:
    if not isinstance(body, dict):
        result.add("invalid_request", "body must be a JSON object.", "body", line_no)
        return
    if body.get("stream") is True:
        result.add("streaming_unsupported", "Streaming is not supported in batches.", "body.stream", line_no)
        return
    model = body.get("model")
    if model is None and endpoint not in MODEL_OPTIONAL:
        result.add("invalid_request", "Missing required parameter: 'model'.", "body.model", line_no)
        return
    for needed in REQUIRED_BODY_FIELDS.get(endpoint, ()):
        if needed not in body:
            message = f"Missing required parameter: '{needed}'."
            result.add("invalid_request", message, f"body.{needed}", line_no)
            return
    if endpoint == "/v1/embeddings":
        result.embedding_inputs += count_embedding_inputs(body.get("input"))
    if model is None:
        return
    if models is not None and not (isinstance(model, str) and is_known_model(model, models)):
        # The service's words for a model its Batch API does not know, e.g. a misspelt one.
        message = f"The provided model '{model}' is not supported by the Batch API."
        result.add("model_not_found", message, "body.model", line_no)
        return
    if result.model is None:
        result.model = model
    elif model != result.model:
        message = f"All requests must use the same model; found '{model}' after '{result.model}'."
        result.add("model_mismatch", message, "body.model", line_no)


def validate_input(
    path: Path,
    endpoint: str,
    max_requests: int,
    models: frozenset[str] | None = None,
    max_embedding_inputs: int = 50_000,
    *,
    url_aliases: Mapping[str, str] | None = None,
) -> ValidationResult:
    """Validate a batch input file without loading it whole into memory.

    ``url_aliases`` maps other spellings of a request line's ``url`` to the endpoint they stand for
    (Azure takes ``/chat/completions`` for ``/v1/chat/completions``).
    """
    result = ValidationResult()
    seen: set[str] = set()
    line_no = 0
    with path.open("rb") as handle:
        for raw in handle:
            line_no += 1
            if not raw.strip():
                continue
            result.total += 1
            result.estimated_tokens += estimate_tokens(len(raw))
            if result.total > max_requests:
                continue
            if line_no == 1 and raw.startswith(BOM):
                result.add("invalid_json_line", "This line is not parseable as valid JSON.", None, line_no)
                continue
            try:
                data = json.loads(raw)
            except ValueError:
                result.add("invalid_json_line", "This line is not parseable as valid JSON.", None, line_no)
                continue
            _check_line(data, line_no, endpoint, seen, models, result, url_aliases)
    if result.total == 0:
        result.add("empty_file", "The input file is empty.", None, None)
    elif result.total > max_requests:
        message = f"The batch has {result.total} requests; the limit is {max_requests}."
        result.add("too_many_tasks", message, None, None)
    elif result.embedding_inputs > max_embedding_inputs:
        message = (
            f"The batch has {result.embedding_inputs} embedding inputs; the limit is "
            f"{max_embedding_inputs} per embeddings batch."
        )
        result.add("too_many_embedding_inputs", message, None, None)
    return result
