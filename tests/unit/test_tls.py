"""Every API client of a process verifies servers against the SDKs' trust store, loaded once.

The emulator serves HTTPS with a certificate from a certificate authority made for the test; the
clients trust it only when ``SSL_CERT_FILE`` names that authority, as the SDKs' own clients do.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import ssl
from typing import TYPE_CHECKING, Any

import openai
import pytest

from openai_batch import tls
from openai_batch.anthropic_hook import AnthropicBatchHook
from openai_batch.hooks import OpenAIBatchHook
from openai_batch.poller import BatchPollError, PollSettings, shared_poller

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

KEY = "sk-test-tls-0123456789abcdef"
ANTHROPIC_KEY = "sk-ant-tls-0123456789"


def _certificates(folder: Path) -> tuple[Path, Path, Path]:
    """Write a test CA and a server certificate it signed for localhost; return (ca, cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "openai-batch test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


@pytest.fixture
def https_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Path]]:
    """The emulator over HTTPS, both connections pointing at it; yield it and the CA file."""
    from openai_emulator.testing import EmulatorServer

    ca, cert, key = _certificates(tmp_path)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    monkeypatch.setattr(tls, "_CONTEXTS", {})  # each test starts with no context built
    with EmulatorServer(tmp_path / "emu", tls=(str(cert), str(key)), validating_seconds=0) as server:
        monkeypatch.setenv(
            "AIRFLOW_CONN_OPENAI_TLS",
            json.dumps({"conn_type": "openai", "password": KEY, "host": server.base_url}),
        )
        monkeypatch.setenv(
            "AIRFLOW_CONN_ANTHROPIC_TLS",
            json.dumps({"conn_type": "anthropic", "password": ANTHROPIC_KEY, "host": server.url}),
        )
        yield server, ca


def _batch(hook: OpenAIBatchHook) -> str:
    line = {
        "custom_id": "a",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    }
    uploaded = hook.conn.files.create(file=("in.jsonl", (json.dumps(line) + "\n").encode()), purpose="batch")
    return hook.conn.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    ).id


async def _poll(server: Any, batch_id: str) -> dict[str, Any]:
    async with shared_poller(PollSettings(base_url=server.base_url, api_key=KEY, max_retries=0)) as poller:
        return await poller.get_batch(batch_id)


async def _async_retrieve(batch_id: str) -> str:
    client = await OpenAIBatchHook(conn_id="openai_tls", max_retries=0, timeout=30.0).shared_async_client()
    try:
        return (await client.batches.retrieve(batch_id)).id
    finally:
        await client.close()  # its loop ends here; the server waits for open connections on stop


def test_every_client_trusts_the_certificates_the_sdks_trust(
    https_api: tuple[Any, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, ca = https_api
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # as the SDKs read it: a private CA, a TLS proxy
    hook = OpenAIBatchHook(conn_id="openai_tls", max_retries=0)
    batch_id = _batch(hook)
    assert asyncio.run(_async_retrieve(batch_id)) == batch_id
    # The lean poller stands in for the SDK's async client: the same store, not a bundle of its own.
    assert asyncio.run(_poll(server, batch_id))["id"] == batch_id
    anthropic_hook = AnthropicBatchHook(conn_id="anthropic_tls", max_retries=0)
    assert anthropic_hook.client.messages.batches.list(limit=1).data == []
    assert asyncio.run(_anthropic_async_list()) == []
    hook.conn.close()
    anthropic_hook.client.close()


async def _anthropic_async_list() -> list[Any]:
    client = await AnthropicBatchHook(conn_id="anthropic_tls", max_retries=0).shared_async_client()
    try:
        return (await client.messages.batches.list(limit=1)).data
    finally:
        await client.close()


def _refused_certificate(err: BaseException) -> bool:
    """Whether ``err`` or an error it was raised from is a failed certificate verification."""
    seen: BaseException | None = err
    while seen is not None:
        if "CERTIFICATE_VERIFY_FAILED" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def test_no_client_trusts_a_server_its_store_does_not_vouch_for(https_api: tuple[Any, Path]) -> None:
    import anthropic

    server, _ = https_api  # SSL_CERT_FILE unset: the test CA is in no store
    hook = OpenAIBatchHook(conn_id="openai_tls", max_retries=0)
    with pytest.raises(openai.APIConnectionError) as sync_error:
        hook.conn.batches.list(limit=1)
    with pytest.raises(openai.APIConnectionError) as async_error:
        asyncio.run(_async_retrieve("batch_x"))
    with pytest.raises(BatchPollError) as poll_error:
        asyncio.run(_poll(server, "batch_x"))
    with pytest.raises(anthropic.APIConnectionError) as anthropic_error:
        AnthropicBatchHook(conn_id="anthropic_tls", max_retries=0).client.messages.batches.list()
    for info in (sync_error, async_error, poll_error, anthropic_error):
        assert _refused_certificate(info.value), repr(info.value)


def test_the_certificates_are_loaded_once_per_process_and_setting(
    https_api: tuple[Any, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    server, ca = https_api
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    loads: list[Any] = []
    real = ssl.SSLContext.load_verify_locations

    def counted(self: ssl.SSLContext, *args: Any, **kwargs: Any) -> None:
        loads.append(args or kwargs)
        real(self, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counted)
    # Three tasks' worth of sync clients, two async clients with other settings, the poller, Anthropic's.
    hooks = [OpenAIBatchHook(conn_id="openai_tls", max_retries=0, timeout=30.0 + i) for i in range(3)]
    batch_id = _batch(hooks[0])
    for hook in hooks[1:]:
        assert hook.conn.batches.retrieve(batch_id).id == batch_id
    assert asyncio.run(_async_retrieve(batch_id)) == batch_id
    assert asyncio.run(_poll(server, batch_id))["id"] == batch_id
    anthropic_hook = AnthropicBatchHook(conn_id="anthropic_tls")
    assert anthropic_hook.client.messages.batches.list().data == []
    assert len(loads) == 1, loads
    # Another store named in the environment is honoured, not hidden behind the first context.
    other = tmp_path / "other-ca.pem"
    other.write_bytes(ca.read_bytes())
    monkeypatch.setenv("SSL_CERT_FILE", str(other))
    last = OpenAIBatchHook(conn_id="openai_tls", max_retries=0)
    assert last.conn.batches.retrieve(batch_id).id == batch_id
    assert len(loads) == 2, loads
    for client in (*(h.conn for h in (*hooks, last)), anthropic_hook.client):
        client.close()
