"""
The API key: where it comes from, what is refused, and how it is kept out of logs and error texts.

``api_key_from`` is the one place that turns a connection password (or ``OPENAI_API_KEY``) into the
key sent in the ``Authorization`` header: surrounding whitespace is stripped (a copied key or a
mounted secret file often ends in a newline), and a key with whitespace or control characters
inside is refused with an error that names where the key came from, never the key itself.

Every key it returns is registered for redaction, with the value as stored and its escaped forms
(a traceback shows ``'sk-...\\n'``, not the raw newline): ``SecretRedactingFilter`` replaces them
with ``***`` in the message, the arguments and the exception of each log record, and the same
values go to Airflow's own masker (``mask_secret``), which redacts the structured task and
trigger logs. This module imports nothing from Airflow at import time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys
import threading
from typing import Any

#: What replaces a secret in logs and error texts (Airflow's masker uses the same).
REDACTED = "***"

#: Values shorter than this are not redacted: replacing them would garble unrelated text.
MIN_SECRET_LENGTH = 5

#: Characters a key may hold: printable ASCII without the space (HTTP header values allow no more).
_KEY_CHARS = re.compile(r"[\x21-\x7e]+")

_lock = threading.Lock()
_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None


class InvalidAPIKeyError(ValueError):
    """Raise when a stored API key cannot be sent (the message names its source, never the key)."""


def _describe(char: str) -> str:
    names = {" ": "a space", "\t": "a tab", "\n": "a newline", "\r": "a carriage return"}
    return names.get(char, f"the character U+{ord(char):04X}")


def api_key_from(value: str | None, *, conn_id: str | None = None, use_env: bool = True) -> str | None:
    """
    Return the API key to send, from a connection password or (if empty) ``OPENAI_API_KEY``.

    Surrounding whitespace is stripped. The key (stripped and as stored) is registered for
    redaction before anything else can log it.

    :param value: The connection password (or the ``api_key`` client option), as stored.
    :param conn_id: The connection it comes from; named in errors instead of the key.
    :param use_env: Fall back to the ``OPENAI_API_KEY`` environment variable, as the SDK does.
    :return: The key, or None when neither the value nor the environment holds one.
    :raises InvalidAPIKeyError: the key holds whitespace, control or non-ASCII characters inside.
    """
    source = f"connection {conn_id!r}" if conn_id else "the api_key client option"
    if not (value or "").strip() and use_env:
        value, source = os.environ.get("OPENAI_API_KEY"), "environment variable OPENAI_API_KEY"
    if value is None:
        return None
    register_secret(value)
    key = value.strip()
    if not key:
        return None
    register_secret(key)
    if not _KEY_CHARS.fullmatch(key):
        bad = next(c for c in key if not _KEY_CHARS.fullmatch(c))
        raise InvalidAPIKeyError(
            f"The API key of {source} contains {_describe(bad)} inside it; a key holds no whitespace "
            "or control characters. Fix the stored key (surrounding whitespace is stripped already)."
        )
    return key


def _forms(secret: str) -> set[str]:
    """Return the secret and the escaped forms it takes in reprs, JSON and tracebacks."""
    forms = {secret, repr(secret)[1:-1], json.dumps(secret)[1:-1]}
    try:
        forms.add(repr(secret.encode())[2:-1])  # b'...' as an HTTP client's error shows a header
    except UnicodeEncodeError:  # pragma: no cover - str.encode() is UTF-8
        pass
    return {f for f in forms if len(f) >= MIN_SECRET_LENGTH}


def register_secret(secret: str | None) -> None:
    """
    Redact ``secret`` (and its escaped forms) from every log record and error text from now on.

    Also hands it to Airflow's masker when Airflow is present, so the structured task and trigger
    logs (which the supervisor writes) are masked too. Installs the log filter if it is missing.
    """
    global _pattern
    if not secret or len(secret.strip()) < MIN_SECRET_LENGTH:
        return
    new = _forms(secret) - _secrets
    if new:
        with _lock:
            _secrets.update(new)
            # Longest first: a form that contains another is replaced whole.
            _pattern = re.compile("|".join(re.escape(s) for s in sorted(_secrets, key=len, reverse=True)))
        _mask_in_airflow(sorted(new))
    install_log_redaction()


#: Tasks telling a triggerer's supervisor about new secrets (kept so they are not collected early).
_PENDING: set[asyncio.Task[None]] = set()


def _mask_in_airflow(values: list[str]) -> None:
    try:
        from airflow.sdk.log import amask_secret, mask_secret
    except ImportError:  # pragma: no cover - Airflow is always installed with the plugin
        return
    try:
        loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    for value in values:
        try:
            if loop is None:
                mask_secret(value)  # this process's masker and the task supervisor's
            else:
                # On a triggerer's event loop: the supervisor is told without blocking the loop.
                task = loop.create_task(amask_secret(value))
                _PENDING.add(task)
                task.add_done_callback(_PENDING.discard)
        except Exception:  # noqa: BLE001 - masking is best effort here; our own filter still redacts
            logging.getLogger(__name__).debug("Airflow's masker refused a value", exc_info=False)


def redact(text: str) -> str:
    """Return ``text`` with every registered secret replaced by ``***``."""
    pattern = _pattern
    return pattern.sub(REDACTED, text) if pattern is not None and text else text


def _redact_value(value: Any, objects: bool = True) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, bytes):
        return redact(value.decode("utf-8", "replace")).encode() if _pattern is not None else value
    if isinstance(value, tuple):
        return tuple(_redact_value(v, objects) for v in value)
    if isinstance(value, list):
        return [_redact_value(v, objects) for v in value]
    if isinstance(value, dict):
        return {k: _redact_value(v, objects) for k, v in value.items()}
    if isinstance(value, BaseException):
        redact_exception(value)
        return value
    if not objects or isinstance(value, int | float | bool) or value is None:
        return value
    # Anything else is formatted with str() by the handler: redact what it will print.
    text = str(value)
    return redact(text) if redact(text) != text else value


def redact_exception(exc: BaseException | None) -> None:
    """Redact the arguments of an exception and of every exception it was raised from, in place."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        try:
            exc.args = tuple(_redact_value(a) if isinstance(a, str | bytes) else a for a in exc.args)
        except (AttributeError, TypeError):  # pragma: no cover - immutable extension exceptions
            pass
        exc = exc.__cause__ or exc.__context__


class SecretRedactingFilter(logging.Filter):
    """Replace registered secrets with ``***`` in a record's message, arguments and exception."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact the record in place and let it through."""
        if _pattern is None:
            return True
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if record.args:
            record.args = _redact_value(record.args)
        if record.exc_info and record.exc_info[1] is not None:
            redact_exception(record.exc_info[1])
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_FILTER = SecretRedactingFilter()

#: Loggers whose own records are filtered (a logger's filters do not see its children's records;
#: the handlers of the root logger and of every configured logger catch those).
_LOGGERS = ("", "airflow.task", "airflow.triggerer", "airflow.processor", "task", "openai_batch")


def redact_event(logger: Any, method_name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """
    Redact a structlog event: its strings, and the exception it carries (rendered later in the chain).

    Airflow's masker redacts the event's strings but not the exception objects, whose texts the
    renderer formats after it in-process (``dag.test()``, the triggerer's own loop).
    """
    if _pattern is None:
        return event_dict
    exc_info = event_dict.get("exc_info")
    if exc_info is True:
        exc_info = sys.exc_info()
    if isinstance(exc_info, BaseException):
        redact_exception(exc_info)
    elif isinstance(exc_info, tuple) and len(exc_info) == 3 and isinstance(exc_info[1], BaseException):
        redact_exception(exc_info[1])
    for name, value in event_dict.items():
        if name != "exc_info":
            event_dict[name] = _redact_value(value, objects=False)
    return event_dict


def _install_structlog_processor() -> None:
    try:
        import structlog
    except ImportError:  # pragma: no cover - Airflow brings structlog
        return
    processors = structlog.get_config().get("processors")
    # In place, first: loggers already bound (and cached) share this list object.
    if isinstance(processors, list) and redact_event not in processors:
        processors.insert(0, redact_event)


def install_log_redaction() -> None:
    """
    Add the redacting filter to the task, triggerer and root loggers and every configured handler.

    Also puts ``redact_event`` first in structlog's processor chain (Airflow 3 logs through structlog).
    """
    _install_structlog_processor()
    loggers = [logging.getLogger(name) for name in _LOGGERS]
    loggers += [
        logger
        for logger in list(logging.root.manager.loggerDict.values())
        if isinstance(logger, logging.Logger) and logger.handlers
    ]
    for logger in loggers:
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
        for handler in logger.handlers:
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)
