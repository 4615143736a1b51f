"""Azure OpenAI's v1 API (``/openai/v1/...``) on the same port, driven by the official ``openai`` SDK.

Users of Azure's v1 API point ``openai.OpenAI`` at ``{resource}/openai/v1/`` (its key goes as a bearer
token), add ``default_headers={"api-key": key}``, or use ``openai.AzureOpenAI(base_url=..., api_version=
"preview")``, which sends ``api-key`` and ``?api-version=``. ``AzureOpenAI(azure_endpoint=...)`` builds the
older dated paths (``/openai/batches?api-version=2024-10-21``), which the emulator does not serve.
"""

from __future__ import annotations

import asyncio
import time
import urllib.error
from typing import TYPE_CHECKING, Any

import openai
import pytest
from emulator_support import FAST, jsonl, read_lines, wait_for

from openai_emulator.testing import EmulatorProcess, EmulatorServer

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

KEY = "azure-key"
DEPLOYMENTS = {"gpt4o-batch": "gpt-4o-2024-08-06", "mini-batch": "gpt-4o-mini"}
# Azure's 401 answer, as its clients report it (e.g. microsoft/semantic-kernel#10337).
DENIED = {
    "code": "401",
    "message": "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a "
    "valid key for an active subscription and use a correct regional API endpoint for your resource.",
}
DAY = 86_400


def chat(
    custom_id: str, deployment: str = "gpt4o-batch", url: str = "/chat/completions", text: str = "hi"
) -> Any:
    body = {"model": deployment, "messages": [{"role": "user", "content": text}]}
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def respond(custom_id: str, deployment: str = "gpt4o-batch", url: str = "/v1/responses") -> Any:
    body = {"model": deployment, "input": f"question {custom_id}"}
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def bearer_client(base_url: str, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)


def api_key_header_client(base_url: str, key: str = KEY) -> openai.OpenAI:
    # The bearer token the client always sends is not the key: the api-key header is what counts.
    return openai.OpenAI(
        base_url=base_url, api_key="not-the-key", default_headers={"api-key": key}, max_retries=0
    )


def azure_client(base_url: str, key: str = KEY) -> openai.OpenAI:
    return openai.AzureOpenAI(base_url=base_url, api_key=key, api_version="preview", max_retries=0)


CLIENTS = [
    pytest.param(bearer_client, id="openai-bearer"),
    pytest.param(api_key_header_client, id="openai-api-key-header"),
    pytest.param(azure_client, id="azureopenai-v1-base-url"),
]


@pytest.fixture
def azure(tmp_path: Path) -> Iterator[EmulatorServer]:
    with EmulatorServer(tmp_path / "emulator", api_key=KEY, azure_deployments=DEPLOYMENTS, **FAST) as server:
        yield server


def run_batch(client: openai.OpenAI, lines: list[Any], endpoint: str = "/chat/completions", **kw: Any) -> Any:
    file = client.files.create(file=("tasks.jsonl", jsonl(lines)), purpose="batch")
    batch = client.batches.create(
        input_file_id=file.id,
        endpoint=endpoint,  # type: ignore[arg-type]
        completion_window="24h",
        **kw,
    )
    return wait_for(client, batch.id)


# Upload, create, poll, download


@pytest.mark.parametrize("make_client", CLIENTS)
@pytest.mark.parametrize(
    ("url", "endpoint"),
    [
        pytest.param("/chat/completions", "/chat/completions", id="docs-url"),
        pytest.param("/v1/chat/completions", "/chat/completions", id="v1-url"),
        pytest.param("/v1/chat/completions", "/v1/chat/completions", id="v1-endpoint"),
    ],
)
def test_batch_with_deployment_names(
    azure: EmulatorServer, make_client: Callable[[str], openai.OpenAI], url: str, endpoint: str
) -> None:
    client = make_client(azure.azure_base_url)
    file = client.files.create(
        file=("tasks.jsonl", jsonl([chat(f"task-{i}", url=url, text=f"q{i}") for i in range(5)])),
        purpose="batch",
    )
    assert file.purpose == "batch"
    assert file.expires_at is None  # Azure keeps an upload without expires_after; /v1 gives it 30 days
    batch = client.batches.create(input_file_id=file.id, endpoint=endpoint, completion_window="24h")  # type: ignore[arg-type]
    assert batch.status == "validating"
    assert batch.endpoint == endpoint
    done = wait_for(client, batch.id)
    assert done.status == "completed", done.errors
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (5, 5, 0)
    assert done.model == "gpt-4o-2024-08-06"
    lines = read_lines(client, done.output_file_id)
    assert sorted(line["custom_id"] for line in lines) == [f"task-{i}" for i in range(5)]
    by_id = {line["custom_id"]: line["response"]["body"] for line in lines}
    # Azure answers with the deployment's model, e.g. gpt-4o-2024-08-06, not the deployment name.
    assert {body["model"] for body in by_id.values()} == {"gpt-4o-2024-08-06"}
    assert by_id["task-3"]["choices"][0]["message"]["content"] == "Echo: q3"
    assert done.usage is not None
    assert done.usage.input_tokens == sum(body["usage"]["prompt_tokens"] for body in by_id.values())


def test_the_input_file_decides_between_chat_and_responses(azure: EmulatorServer) -> None:
    client = bearer_client(azure.azure_base_url)
    # Azure's own example passes endpoint="/chat/completions" for a file of /v1/responses requests.
    done = run_batch(client, [respond(f"r{i}", "mini-batch") for i in range(3)], endpoint="/chat/completions")
    assert done.status == "completed", done.errors
    assert done.endpoint == "/v1/responses"
    bodies = [line["response"]["body"] for line in read_lines(client, done.output_file_id)]
    assert [body["object"] for body in bodies] == ["response"] * 3
    assert {body["model"] for body in bodies} == {"gpt-4o-mini"}


@pytest.mark.parametrize(
    ("lines", "code"),
    [
        pytest.param([chat("a", "gpt4o-batch-typo")], "model_not_found", id="unknown-deployment"),
        pytest.param([chat("a", "gpt-4o")], "model_not_found", id="model-name-instead-of-deployment"),
        pytest.param([chat("a"), chat("b", "mini-batch")], "model_mismatch", id="two-deployments"),
        pytest.param([chat("a"), respond("b")], "url_mismatch", id="chat-and-responses-lines"),
        pytest.param([chat("a", url="/v1/embeddings")], "url_mismatch", id="embeddings-url"),
        pytest.param([chat("a"), chat("a")], "duplicate_custom_id", id="duplicate-custom-id"),
        pytest.param([{"custom_id": "a"}], "missing_required_parameter", id="line-without-url"),
    ],
)
def test_invalid_input_fails_the_batch(azure: EmulatorServer, lines: list[Any], code: str) -> None:
    done = run_batch(bearer_client(azure.azure_base_url), lines)
    assert done.status == "failed"
    assert done.errors is not None
    assert done.errors.data is not None
    assert code in [error.code for error in done.errors.data]
    assert done.output_file_id is None


def test_unknown_deployment_message_names_it(azure: EmulatorServer) -> None:
    done = run_batch(bearer_client(azure.azure_base_url), [chat("a", "gpt4o-batch-typo")])
    assert done.errors is not None
    assert done.errors.data is not None
    (error,) = done.errors.data
    assert error.code == "model_not_found"
    assert error.message is not None
    assert "deployment name 'gpt4o-batch-typo'" in error.message
    assert error.param == "body.model"


def test_default_deployments_and_the_control_plane(server: EmulatorServer) -> None:
    client = bearer_client(server.azure_base_url, "any-key")
    # Without --azure-deployments every model of --models (and a dated snapshot of one) is a deployment.
    assert server.set_azure_deployments(None) == {"deployments": None}
    done = run_batch(client, [chat("a", "gpt-4o-mini"), chat("b", "gpt-4o-mini")])
    assert done.status == "completed", done.errors
    assert done.model == "gpt-4o-mini"
    assert run_batch(client, [chat("a", "my-deployment")]).status == "failed"

    assert server.set_azure_deployments({"my-deployment": "gpt-4.1"}) == {
        "deployments": {"my-deployment": "gpt-4.1"}
    }
    done = run_batch(client, [chat("a", "my-deployment")])
    assert done.status == "completed", done.errors
    assert {line["response"]["body"]["model"] for line in read_lines(client, done.output_file_id)} == {
        "gpt-4.1"
    }
    failed = run_batch(client, [chat("a", "gpt-4o-mini")])  # a model name is no longer a deployment
    assert failed.errors is not None
    assert failed.errors.data is not None
    assert [error.code for error in failed.errors.data] == ["model_not_found"]
    with pytest.raises(urllib.error.HTTPError) as info:
        server.set_azure_deployments({"my-deployment": ""})
    assert info.value.code == 400


# Limits and the parameters Azure takes differently


def test_too_many_requests(azure: EmulatorServer) -> None:
    azure.configure(azure_max_requests_per_batch=3)
    client = bearer_client(azure.azure_base_url)
    assert run_batch(client, [chat(f"t{i}") for i in range(3)]).status == "completed"
    done = run_batch(client, [chat(f"t{i}") for i in range(4)])
    assert done.status == "failed"
    assert done.errors is not None
    assert done.errors.data is not None
    assert [error.code for error in done.errors.data] == ["too_many_tasks"]


def test_azure_limit_of_100000_requests_is_the_default(azure: EmulatorServer) -> None:
    assert azure.settings.azure_max_requests_per_batch == 100_000
    assert azure.settings.max_requests_per_batch == 50_000  # /v1 keeps OpenAI's


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        pytest.param({"endpoint": "/v1/embeddings"}, "endpoint", id="embeddings-endpoint"),
        pytest.param({"endpoint": "/v1/completions"}, "endpoint", id="completions-endpoint"),
        pytest.param({"completion_window": "48h"}, "completion_window", id="window-48h"),
        pytest.param(
            {"output_expires_after": {"anchor": "created_at", "seconds": 3600}},
            "output_expires_after.seconds",
            id="output-expiry-1h",
        ),
        pytest.param(
            {"output_expires_after": {"anchor": "created_at", "seconds": 31 * DAY}},
            "output_expires_after.seconds",
            id="output-expiry-31d",
        ),
    ],
)
def test_create_refuses(azure: EmulatorServer, kwargs: dict[str, Any], param: str) -> None:
    client = bearer_client(azure.azure_base_url)
    file_id = client.files.create(file=("tasks.jsonl", jsonl([chat("a")])), purpose="batch").id
    arguments: dict[str, Any] = {"endpoint": "/chat/completions", "completion_window": "24h", **kwargs}
    with pytest.raises(openai.BadRequestError) as info:
        client.batches.create(input_file_id=file_id, **arguments)
    assert info.value.param == param
    assert client.batches.list().data == []


@pytest.mark.parametrize(
    ("seconds", "accepted_on_azure"),
    [
        pytest.param(3600, False, id="1h"),
        pytest.param(14 * DAY, True, id="14d"),
        pytest.param(30 * DAY, True, id="30d"),
        pytest.param(30 * DAY + 1, False, id="over-30d"),
    ],
)
def test_file_and_output_expiry_bounds(azure: EmulatorServer, seconds: int, accepted_on_azure: bool) -> None:
    client = bearer_client(azure.azure_base_url)
    expiry: Any = {"anchor": "created_at", "seconds": seconds}
    content = jsonl([chat("a")])
    if not accepted_on_azure:
        with pytest.raises(openai.BadRequestError) as info:
            client.files.create(file=("t.jsonl", content), purpose="batch", expires_after=expiry)
        assert info.value.param == "expires_after.seconds"
        return
    file = client.files.create(file=("t.jsonl", content), purpose="batch", expires_after=expiry)
    assert file.expires_at == file.created_at + seconds
    batch = client.batches.create(
        input_file_id=file.id,
        endpoint="/chat/completions",  # type: ignore[arg-type]
        completion_window="24h",
        output_expires_after=expiry,
    )
    done = wait_for(client, batch.id)
    assert done.output_file_id is not None
    output = client.files.retrieve(done.output_file_id)
    assert output.expires_at is not None
    assert abs(output.expires_at - (int(time.time()) + seconds)) <= 5


def test_one_hour_expiry_stays_accepted_on_v1(azure: EmulatorServer) -> None:
    client = openai.OpenAI(base_url=azure.base_url, api_key=KEY, max_retries=0)
    file = client.files.create(
        file=("t.jsonl", jsonl([chat("a", url="/v1/chat/completions")])),
        purpose="batch",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )
    assert file.expires_at == file.created_at + 3600
    assert client.files.create(file=("u.jsonl", b'{"a": 1}\n'), purpose="batch").expires_at is not None


def test_batch_file_count_limits(azure: EmulatorServer) -> None:
    azure.configure(azure_max_batch_files=2, azure_max_expiring_batch_files=3)
    client = bearer_client(azure.azure_base_url)
    content = jsonl([chat("a")])
    expiring: Any = {"anchor": "created_at", "seconds": 14 * DAY}
    kept = [client.files.create(file=(f"{i}.jsonl", content), purpose="batch").id for i in range(2)]
    with pytest.raises(openai.BadRequestError) as info:
        client.files.create(file=("2.jsonl", content), purpose="batch")
    assert info.value.code == "quota_exceeded"
    # With an expiry the limit is the higher one; other purposes do not count.
    client.files.create(file=("2.jsonl", content), purpose="batch", expires_after=expiring)
    client.files.create(file=("notes.jsonl", content), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("3.jsonl", content), purpose="batch", expires_after=expiring)
    client.files.delete(kept[0])
    assert client.files.create(file=("4.jsonl", content), purpose="batch").expires_at is None


def test_purposes_azure_does_not_take(azure: EmulatorServer) -> None:
    client = bearer_client(azure.azure_base_url)
    with pytest.raises(openai.BadRequestError) as info:
        client.files.create(file=("a.png", b"png"), purpose="vision")
    assert info.value.param == "purpose"


# Keys, api-version, paths


def _list(client: openai.OpenAI, **kw: Any) -> Any:
    return client.batches.list(**kw)


@pytest.mark.parametrize(
    ("call", "status", "body"),
    [
        pytest.param(lambda url: _list(bearer_client(url, "wrong")), 401, DENIED, id="wrong-bearer-key"),
        pytest.param(
            lambda url: _list(api_key_header_client(url, "wrong")), 401, DENIED, id="wrong-api-key-header"
        ),
        pytest.param(lambda url: _list(azure_client(url, "wrong")), 401, DENIED, id="wrong-key-azure-client"),
        pytest.param(
            lambda url: _list(bearer_client(url), extra_headers={"Authorization": openai.omit}),
            401,
            DENIED,
            id="no-key",
        ),
        pytest.param(
            lambda url: _list(
                openai.AzureOpenAI(base_url=url, api_key=KEY, api_version="2024-10-21", max_retries=0)
            ),
            400,
            {"code": "BadRequest", "message": "API version not supported"},
            id="dated-api-version",
        ),
    ],
)
def test_refused_before_any_route(
    azure: EmulatorServer, call: Callable[[str], Any], status: int, body: dict[str, str]
) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        call(azure.azure_base_url)
    assert info.value.status_code == status
    assert info.value.body == body  # Azure's envelope: {"error": {"code", "message"}}
    assert info.value.code == body["code"]
    assert azure.stats().get("unauthorized", 0) == (1 if status == 401 else 0)


@pytest.mark.parametrize("api_version", ["v1", "preview"])
def test_api_versions_of_the_v1_api(azure: EmulatorServer, api_version: str) -> None:
    client = openai.AzureOpenAI(
        base_url=azure.azure_base_url, api_key=KEY, api_version=api_version, max_retries=0
    )
    assert [m.id for m in client.models.list()][:2] == ["gpt-4o", "gpt-4o-mini"]


def test_the_older_dated_paths_are_not_served(azure: EmulatorServer) -> None:
    client = openai.AzureOpenAI(
        azure_endpoint=azure.url, api_key=KEY, api_version="2024-10-21", max_retries=0
    )
    with pytest.raises(openai.NotFoundError):
        client.batches.list()  # GET /openai/batches?api-version=2024-10-21


def test_v1_keeps_the_bearer_key_and_openai_answers(azure: EmulatorServer) -> None:
    client = openai.OpenAI(
        base_url=azure.base_url, api_key="wrong", default_headers={"api-key": KEY}, max_retries=0
    )
    with pytest.raises(openai.AuthenticationError) as info:
        client.batches.list()
    assert info.value.code == "invalid_api_key"


def test_both_apis_share_the_store(azure: EmulatorServer) -> None:
    done = run_batch(bearer_client(azure.azure_base_url), [chat("a", "mini-batch")])
    openai_client = openai.OpenAI(base_url=azure.base_url, api_key=KEY, max_retries=0)
    assert openai_client.batches.retrieve(done.id).status == "completed"
    assert [b.id for b in openai_client.batches.list()] == [done.id]


def test_sync_chat_completion_with_a_deployment(azure: EmulatorServer) -> None:
    client = bearer_client(azure.azure_base_url)
    completion = client.chat.completions.create(
        model="gpt4o-batch", messages=[{"role": "user", "content": "ping"}]
    )
    assert completion.model == "gpt-4o-2024-08-06"
    assert completion.choices[0].message.content == "Echo: ping"
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "ping"}])
    assert info.value.code == "DeploymentNotFound"


# Async client, restart, faults, proxy


def test_async_client(azure: EmulatorServer) -> None:
    async def scenario() -> tuple[Any, list[str]]:
        async with openai.AsyncOpenAI(base_url=azure.azure_base_url, api_key=KEY, max_retries=0) as client:
            file = await client.files.create(
                file=("t.jsonl", jsonl([chat(f"a{i}", "mini-batch") for i in range(4)])), purpose="batch"
            )
            batch = await client.batches.create(
                input_file_id=file.id,
                endpoint="/chat/completions",  # type: ignore[arg-type]
                completion_window="24h",
            )
            for _ in range(400):
                batch = await client.batches.retrieve(batch.id)
                if batch.status in ("completed", "failed"):
                    break
                await asyncio.sleep(0.05)
            assert batch.output_file_id is not None
            content = await client.files.content(batch.output_file_id)
            return batch, content.text.splitlines()

    batch, lines = asyncio.run(asyncio.wait_for(scenario(), 20))
    assert batch.status == "completed"
    assert len(lines) == 4
    assert all('"model": "gpt-4o-mini"' in line for line in lines)


def test_restart_keeps_azure_batches_and_their_deployment(tmp_path: Path) -> None:
    args = [
        "--azure-deployments",
        "prod-batch=gpt-4o-mini,other=gpt-4.1",
        "--api-key",
        KEY,
        "--validating-seconds",
        "0.05",
        "--finalizing-seconds",
        "0.05",
        "--requests-per-second",
        "100",
    ]
    with EmulatorProcess(tmp_path / "data", extra_args=args) as emulator:
        client = bearer_client(emulator.azure_base_url)
        file = client.files.create(
            file=("t.jsonl", jsonl([chat(f"r{i}", "prod-batch") for i in range(150)])), purpose="batch"
        )
        batch = client.batches.create(
            input_file_id=file.id, endpoint="/chat/completions", completion_window="24h"
        )  # type: ignore[arg-type]
        deadline = time.monotonic() + 15
        while (current := client.batches.retrieve(batch.id)).request_counts.completed < 20:  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert current.status == "in_progress"
        emulator.restart()
        done = wait_for(client, batch.id, timeout=30)
        assert done.status == "completed"
        assert done.model == "gpt-4o-mini"
        lines = read_lines(client, done.output_file_id)
        assert sorted(line["custom_id"] for line in lines) == sorted(f"r{i}" for i in range(150))
        assert {line["response"]["body"]["model"] for line in lines} == {"gpt-4o-mini"}
        with pytest.raises(openai.AuthenticationError):
            bearer_client(emulator.azure_base_url, "wrong").batches.list()


def test_injected_errors_on_azure_routes(azure: EmulatorServer) -> None:
    client = bearer_client(azure.azure_base_url)
    file_id = client.files.create(file=("t.jsonl", jsonl([chat("a")])), purpose="batch").id
    azure.set_faults(error_rate=1.0, error_codes=[503], error_routes=["POST /openai/v1/batches"])
    with pytest.raises(openai.InternalServerError) as info:
        client.batches.create(input_file_id=file_id, endpoint="/chat/completions", completion_window="24h")  # type: ignore[arg-type]
    assert info.value.status_code == 503
    assert client.batches.list().data == []  # the call had no effect; other routes answer
    openai_client = openai.OpenAI(base_url=azure.base_url, api_key=KEY, max_retries=0)
    assert openai_client.batches.list().data == []  # /v1 routes are not matched by the pattern
    stats = azure.stats()
    assert stats["injected_errors"] == 1
    assert stats["requests_by_route"]["POST /openai/v1/batches"] == 1
    assert stats["requests_by_route"]["GET /openai/v1/batches"] == 1


def test_per_request_failures_on_azure_batches(azure: EmulatorServer) -> None:
    azure.set_faults(request_failure_rate=1.0, request_failure_codes=[500])
    client = bearer_client(azure.azure_base_url)
    done = run_batch(client, [chat(f"a{i}") for i in range(3)])
    assert done.status == "completed"
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (0, 3)
    assert {line["response"]["status_code"] for line in read_lines(client, done.error_file_id)} == {500}


def test_proxy_backend_gets_the_model_not_the_deployment(tmp_path: Path) -> None:
    with (
        EmulatorServer(tmp_path / "upstream") as upstream,
        EmulatorServer(
            tmp_path / "proxy",
            backend="proxy",
            upstream_base_url=upstream.base_url,
            azure_deployments={"prod": "gpt-4o-mini"},
            **FAST,
        ) as proxy,
    ):
        client = bearer_client(proxy.azure_base_url)
        done = run_batch(client, [chat(f"a{i}", "prod", text=f"q{i}") for i in range(3)])
        assert done.status == "completed", done.errors
        bodies = [line["response"]["body"] for line in read_lines(client, done.output_file_id)]
        assert {body["model"] for body in bodies} == {"gpt-4o-mini"}
        assert upstream.stats()["requests_by_route"]["POST /v1/chat/completions"] == 3
