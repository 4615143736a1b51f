"""Azure OpenAI's v1 API for batch work (``/openai/v1/...``), served by the same routes as ``/v1``.

What differs from OpenAI's API lives here, as Azure's documentation describes it:

- batch how-to: https://learn.microsoft.com/en-us/azure/ai-foundry/openai/how-to/batch (request format,
  error codes, file and output expiry), its limits include
  https://learn.microsoft.com/en-us/azure/ai-foundry/openai/quotas-limits#batch-limits (500 batch files
  per resource, 200 MB per input file, 100,000 requests per file);
- the v1 API: https://learn.microsoft.com/en-us/azure/ai-foundry/openai/api-version-lifecycle and its
  OpenAPI document (Azure/azure-rest-api-specs, ``specification/ai/data-plane/OpenAI.v1``): the
  ``api-version`` query parameter is optional, ``v1`` or ``preview``; keys go in the ``api-key`` header,
  and the OpenAI client's ``Authorization: Bearer`` works too.

On Azure the ``model`` of each request line names a *deployment*; ``--azure-deployments`` maps deployment
names to the models they serve (without it every model of ``--models`` is a deployment of its own name).
Deployment types (Global Batch, Data Zone Batch) are not modelled: every deployment takes batches.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from openai_emulator.errors import APIError, bad_request
from openai_emulator.routes import Dialect, v1
from openai_emulator.validation import BOM, is_known_model, validate_input

if TYPE_CHECKING:
    from pathlib import Path

    from fastapi import FastAPI

    from openai_emulator.settings import EmulatorSettings
    from openai_emulator.state import EmulatorState
    from openai_emulator.validation import ValidationResult

AZURE_PREFIX = "/openai"
API_VERSIONS = frozenset({"v1", "preview"})
# The answer Azure gives a request without a valid key (the same words for a missing and a wrong one).
UNAUTHORIZED = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key "
    "for an active subscription and use a correct regional API endpoint for your resource."
)
DEPLOYMENT_NOT_FOUND = (
    "The API deployment for this resource does not exist. If you created the deployment within the last "
    "5 minutes, please wait a moment and try again."
)
# The ``url`` values of request lines, and the ``endpoint`` values of batch create, that Azure takes, each
# with the OpenAI endpoint that answers it. The how-to's lines use "/chat/completions" (older pages) and
# "/v1/chat/completions" / "/v1/responses" (current pages); its create calls pass "/chat/completions" and
# say the service reads the input file to tell chat completions from responses. Batch embeddings are not
# supported on Azure (the how-to's FAQ).
AZURE_ENDPOINTS = {
    "/chat/completions": "/v1/chat/completions",
    "/v1/chat/completions": "/v1/chat/completions",
    "/responses": "/v1/responses",
    "/v1/responses": "/v1/responses",
}
# ``expires_after`` of an upload and ``output_expires_after`` of a batch: 14 to 30 days on Azure.
AZURE_EXPIRY_SECONDS = (1_209_600, 2_592_000)
AZURE_FILE_PURPOSES = frozenset({"assistants", "batch", "fine-tune", "evals"})


def is_azure_path(path: str) -> bool:
    """Return True for a path of Azure's v1 API (``/openai/v1/...``; the older dated paths are not served)."""
    return path.startswith(AZURE_PREFIX + "/v1/")


def azure_error(status_code: int, code: str, message: str) -> JSONResponse:
    """Return Azure's own error answer ``{"error": {"code", "message"}}``."""
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status_code)


def azure_refusal(state: EmulatorState, request: Request, bearer_key: str) -> JSONResponse | None:
    """Return the answer to a request Azure would refuse before any route runs, or None.

    The key is the ``api-key`` header, else the bearer token; ``--api-key``, when set, must match it.
    """
    key = request.headers.get("api-key", "").strip() or bearer_key
    api_key = state.settings.api_key
    if not key or (api_key is not None and key != api_key):
        state.stats.incr("unauthorized")
        return azure_error(401, "401", UNAUTHORIZED)
    version = request.query_params.get("api-version")
    if version is not None and version not in API_VERSIONS:
        return azure_error(400, "BadRequest", "API version not supported")
    return None


def deployments(settings: EmulatorSettings) -> dict[str, str] | None:
    """Return the deployment names and their models, or None when every known model is a deployment."""
    return None if settings.azure_deployments is None else dict(settings.azure_deployments)


def deployment_model(settings: EmulatorSettings, name: Any) -> str | None:
    """Return the model a deployment serves, or None if there is no such deployment."""
    if not isinstance(name, str):
        return None
    named = deployments(settings)
    if named is not None:
        return named.get(name)
    return name if is_known_model(name, frozenset(settings.models)) else None


def check_deployments(value: Any) -> dict[str, str] | None:
    """Check a deployments mapping (``{"name": "model"}`` or None); raise ``ValueError`` if it is not."""
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and k and isinstance(v, str) and v for k, v in value.items()
    ):
        raise ValueError("deployments must be an object of deployment names to model names, or null")
    return dict(value)


class AzureDialect(Dialect):
    """Azure's rules on the shared routes: endpoints, expiry bounds, file count limits and deployments."""

    api = "azure"
    prefix = AZURE_PREFIX
    endpoints = tuple(AZURE_ENDPOINTS)
    expiry_seconds = AZURE_EXPIRY_SECONDS
    file_purposes = AZURE_FILE_PURPOSES
    # Azure keeps an upload without expires_after until it is deleted.
    batch_file_expiry = None

    def check_upload(self, state: EmulatorState, purpose: str, expires_in: int | None) -> None:
        """Refuse a batch upload beyond Azure's file counts: 500 without expiry, 10,000 in all."""
        if purpose != "batch":
            return
        settings = state.settings
        most = settings.azure_max_expiring_batch_files
        records, _ = state.store.list_files("batch", most + 1, True, None)
        now = time.time()
        live = [r for r in records if r.expires_at is None or r.expires_at > now]
        lasting = sum(1 for r in live if r.expires_at is None)
        if len(live) >= most:
            message = f"The resource already holds {len(live)} batch files; the limit is {most}."
        elif expires_in is None and lasting >= settings.azure_max_batch_files:
            message = (
                f"The resource already holds {lasting} batch files without an expiry; the limit is "
                f"{settings.azure_max_batch_files}. Set expires_after to raise it to {most}, or delete files."
            )
        else:
            return
        raise APIError(400, message, "invalid_request_error", "file", "quota_exceeded")

    def sync_body(self, state: EmulatorState, body: dict[str, Any]) -> dict[str, Any]:
        """Name the deployment's model in a synchronous request; 404 DeploymentNotFound without one."""
        if "model" not in body:
            return body
        model = deployment_model(state.settings, body["model"])
        if model is None:
            raise APIError(404, DEPLOYMENT_NOT_FOUND, "invalid_request_error", None, "DeploymentNotFound")
        return {**body, "model": model}


AZURE = AzureDialect()


async def _use_azure(request: Request) -> None:
    request.state.dialect = AZURE


control = APIRouter(prefix="/_emulator/azure")


@control.get("/deployments")
async def get_deployments(request: Request) -> JSONResponse:
    """Return the deployments (null: every model of ``--models`` is a deployment of its own name)."""
    state: EmulatorState = request.app.state.emulator
    return JSONResponse({"deployments": deployments(state.settings)})


@control.put("/deployments")
async def put_deployments(request: Request) -> JSONResponse:
    """Replace the deployments: ``{"deployments": {"name": "model", ...}}``, or null for the default."""
    state: EmulatorState = request.app.state.emulator
    try:
        body = await request.json()
        if not isinstance(body, dict) or set(body) != {"deployments"}:
            raise ValueError('The body must be {"deployments": {...}} or {"deployments": null}.')
        state.settings.azure_deployments = check_deployments(body["deployments"])
    except ValueError as exc:
        raise bad_request(str(exc), None, "invalid_deployments") from exc
    return JSONResponse({"deployments": deployments(state.settings)})


def install(app: FastAPI) -> None:
    """Serve the ``/v1`` routes under ``/openai`` too, with Azure's rules, and the deployments control."""
    app.include_router(v1, prefix=AZURE_PREFIX, dependencies=[Depends(_use_azure)])
    app.include_router(control)


# Batches: validation (before in_progress) and the requests the backend gets


def _first_url(path: Path) -> Any:
    """Return the ``url`` of the first non-blank line, or None when that line is not a JSON object."""
    with path.open("rb") as handle:
        for raw in handle:
            if raw.strip():
                try:
                    data = json.loads(raw.removeprefix(BOM))
                except ValueError:
                    return None
                return data.get("url") if isinstance(data, dict) else None
    return None


def validate_azure_input(
    path: Path, endpoint: str, settings: EmulatorSettings
) -> tuple[ValidationResult, str]:
    """Validate an Azure batch input file as Azure does; return the result and the batch's endpoint.

    The requests' ``url`` decides between chat completions and responses (Azure reads the file for that,
    whatever ``endpoint`` the batch was created with); every line must name the same one (``url_mismatch``)
    and the same deployment (``model_mismatch``), and that deployment must exist (``model_not_found``). The
    result's ``model`` is the deployment's model. The endpoint returned is the one created with, unless the
    lines name the other API.
    """
    first = _first_url(path)
    target = (AZURE_ENDPOINTS.get(first) if isinstance(first, str) else None) or AZURE_ENDPOINTS[endpoint]
    result = validate_input(
        path,
        target,
        settings.azure_max_requests_per_batch,
        None,
        settings.max_embedding_inputs,
        url_aliases=AZURE_ENDPOINTS,
    )
    for error in result.errors:
        if error["code"] == "invalid_url":  # Azure's code for a url that differs from the others'
            error["code"] = "url_mismatch"
    if result.model is not None:
        model = deployment_model(settings, result.model)
        if model is None:
            message = (
                f"The Azure OpenAI model deployment name '{result.model}' specified in the model property "
                "of the input file wasn't found."
            )
            result.add("model_not_found", message, "body.model", None)
        result.model = model
    shown = endpoint if AZURE_ENDPOINTS[endpoint] == target else target
    return result, shown


def upstream_requests(
    endpoint: str, model: str | None, bodies: list[dict[str, Any]]
) -> tuple[str, list[dict[str, Any]]]:
    """Return the OpenAI endpoint and the bodies (naming the deployment's model) the backend answers."""
    target = AZURE_ENDPOINTS.get(endpoint, endpoint)
    if model is None:
        return target, bodies
    return target, [{**body, "model": model} for body in bodies]
