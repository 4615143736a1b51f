"""The API key: stripped and checked in one place, used by every client, redacted from log records."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import pytest

from openai_batch.secrets import InvalidAPIKeyError, api_key_from, install_log_redaction

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

KEY = "sk-unit-canary-31d7-middle-part"


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[Any]:
    from openai_emulator.testing import EmulatorServer

    with EmulatorServer(tmp_path / "emulator", api_key=KEY) as server:
        yield server


def _connection(monkeypatch: pytest.MonkeyPatch, base_url: str, password: str) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_OPENAI_DEFAULT",
        json.dumps({"conn_type": "openai", "password": password, "host": base_url}),
    )


@pytest.mark.parametrize("stored", [KEY + "\n", KEY + "\r\n", f"  {KEY}\t", KEY])
def test_surrounding_whitespace_is_stripped(stored: str) -> None:
    assert api_key_from(stored, conn_id="c") == KEY


@pytest.mark.parametrize(
    ("stored", "what"),
    [
        (KEY[:8] + " " + KEY[8:], "a space"),
        (KEY + "\nsk-second", "a newline"),
        (KEY[:8] + "\x00" + KEY[8:], "U+0000"),
        (KEY[:8] + "é" + KEY[8:], "U+00E9"),
    ],
)
def test_a_key_with_inner_whitespace_or_control_characters_is_refused_by_name(stored: str, what: str) -> None:
    with pytest.raises(InvalidAPIKeyError) as info:
        api_key_from(stored, conn_id="my_openai")
    assert "connection 'my_openai'" in str(info.value)
    assert what in str(info.value)
    assert KEY[8:] not in str(info.value)


def test_the_environment_key_is_stripped_and_checked_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY + "\n")
    assert api_key_from(None, conn_id="c") == KEY
    monkeypatch.setenv("OPENAI_API_KEY", KEY + " x")
    with pytest.raises(InvalidAPIKeyError, match="environment variable OPENAI_API_KEY"):
        api_key_from("", conn_id="c")


def test_sync_and_async_clients_and_the_poller_send_the_stripped_key(
    emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from openai_batch.hooks import OpenAIBatchHook
    from openai_batch.poller import PollSettings, shared_poller

    _connection(monkeypatch, emulator.base_url, KEY + "\n")
    hook = OpenAIBatchHook(max_retries=0)
    assert hook.list_batches().data == []  # the emulator accepts only the stripped key

    async def async_calls() -> None:
        async with await hook.async_client() as client:
            assert (await client.batches.list()).data == []
        settings = PollSettings.from_client_kwargs(await hook.async_client_kwargs())
        assert settings is not None
        async with shared_poller(settings) as poller:
            with pytest.raises(Exception, match="HTTP 404"):
                await poller.get_batch("batch_missing")  # a 404, not a 401: the key was accepted

    asyncio.run(async_calls())
    assert "unauthorized" not in emulator.stats()


def test_the_sdk_environment_fallback_is_stripped(emulator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from openai_batch.hooks import OpenAIBatchHook

    _connection(monkeypatch, emulator.base_url, "")
    monkeypatch.setenv("OPENAI_API_KEY", KEY + "\n")
    assert OpenAIBatchHook(max_retries=0).list_batches().data == []


def test_a_key_with_a_tab_fails_the_client_naming_the_connection(
    emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from openai_batch.hooks import OpenAIBatchAuthError, OpenAIBatchHook, api_errors

    _connection(monkeypatch, emulator.base_url, KEY + "\tsk-second")
    with pytest.raises(OpenAIBatchAuthError) as info, api_errors("openai_default"):
        OpenAIBatchHook(max_retries=0).list_batches()
    assert "connection 'openai_default' contains a tab" in str(info.value)
    assert KEY not in str(info.value)


def test_a_401_is_mapped_to_status_and_code_without_the_chain(
    emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from openai_batch.hooks import OpenAIBatchAuthError, OpenAIBatchHook, api_errors

    _connection(monkeypatch, emulator.base_url, "sk-some-other-key-0000")
    with pytest.raises(OpenAIBatchAuthError) as info, api_errors("openai_default"):
        OpenAIBatchHook(max_retries=0).list_batches()
    assert str(info.value).startswith("The API of connection 'openai_default' answered HTTP 401")
    assert "code invalid_api_key" in str(info.value)
    assert (info.value.status, info.value.code) == (401, "invalid_api_key")
    assert info.value.__suppress_context__  # the SDK's error (with the server's text) is not printed


def test_http_client_errors_are_mapped_without_their_text() -> None:
    import httpx

    from openai_batch.hooks import OpenAIBatchAPIError, api_errors

    with pytest.raises(OpenAIBatchAPIError) as info, api_errors("c"):
        raise httpx.LocalProtocolError(f"Illegal header value b'Bearer {KEY}\\n'")
    assert KEY not in str(info.value)
    assert "connection 'c'" in str(info.value)
    assert info.value.__suppress_context__


def test_log_records_are_redacted_in_message_args_and_exceptions(tmp_path: Path) -> None:
    out = tmp_path / "task.log"
    handler = logging.FileHandler(out)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)  # a handler configured after the plugin was imported
    try:
        api_key_from(KEY + "\n", conn_id="c")  # registers the key (and installs the filter)
        logger = logging.getLogger("some.library")
        logger.warning("header %s", f"Bearer {KEY}")
        logger.warning("raw " + KEY + "\n and escaped " + repr(KEY))  # noqa: G003 - a message built by hand
        try:
            try:
                raise ValueError(f"Illegal header value b'Bearer {KEY}\\n'")
            except ValueError as inner:
                raise RuntimeError("wrapped") from inner
        except RuntimeError:
            logger.exception("call failed")
    finally:
        root.removeHandler(handler)
        handler.close()
    text = out.read_text()
    assert "Illegal header value b'Bearer ***'" in text  # the traceback was written, redacted
    assert text.count("***") >= 4
    assert KEY not in text
    assert "middle-part" not in text


def test_the_filter_sits_on_root_handlers_and_the_task_and_triggerer_loggers() -> None:
    from openai_batch.secrets import SecretRedactingFilter

    handler = logging.StreamHandler()
    logging.getLogger().addHandler(handler)
    try:
        install_log_redaction()
        for name in ("", "airflow.task", "airflow.triggerer"):
            assert any(isinstance(f, SecretRedactingFilter) for f in logging.getLogger(name).filters)
        assert any(isinstance(f, SecretRedactingFilter) for f in handler.filters)
    finally:
        logging.getLogger().removeHandler(handler)


def test_airflows_masker_also_masks_the_escaped_forms() -> None:
    from airflow.sdk._shared.secrets_masker import redact

    api_key_from(KEY + "\n", conn_id="c")
    # The traceback of an illegal header shows the escaped form, which the stored value never matches.
    masked = redact(f"Illegal header value b'Bearer {KEY}\\n'")
    assert masked.startswith("Illegal header value b'Bearer ***")
    assert KEY not in masked
    assert "middle-part" not in redact(json.dumps({"note": f"key {KEY}"}))


def test_structlog_events_are_redacted_before_the_exception_is_rendered() -> None:
    import io

    import structlog

    from openai_batch.secrets import redact_event

    out = io.StringIO()
    old = structlog.get_config()
    structlog.configure(
        processors=[structlog.processors.format_exc_info, structlog.processors.KeyValueRenderer()],
        logger_factory=structlog.PrintLoggerFactory(out),
        wrapper_class=structlog.BoundLogger,
        cache_logger_on_first_use=False,
    )
    try:
        logger = structlog.get_logger("task")
        install_log_redaction()  # put first into the chain that is already configured
        assert structlog.get_config()["processors"][0] is redact_event
        api_key_from(KEY + "\n", conn_id="c")
        try:
            raise ValueError(f"Illegal header value b'Bearer {KEY}\\n'")
        except ValueError:
            logger.error("Task failed with exception", header=f"Bearer {KEY}", exc_info=True)  # noqa: G201
    finally:
        structlog.configure(**old)
    text = out.getvalue()
    assert "ValueError: Illegal header value b" in text  # the traceback was rendered
    assert text.count("Bearer ***") == 2  # in the field and in the exception's text
    assert KEY not in text
    assert "middle-part" not in text


def test_a_key_registered_on_an_event_loop_reaches_airflows_masker_without_blocking() -> None:
    import asyncio

    from airflow.sdk._shared.secrets_masker import redact

    key = "sk-async-canary-84c1-middle"

    async def on_the_loop() -> None:
        api_key_from(key + "\n", conn_id="c")  # as a trigger's hook does, on the triggerer's loop
        await asyncio.sleep(0)  # the masking task runs at the next turn of the loop

    asyncio.run(on_the_loop())
    assert redact(f"Bearer {key}") == "Bearer ***"
