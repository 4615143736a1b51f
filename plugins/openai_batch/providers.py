"""Which batch API a connection speaks, and the hook that speaks it: one owner for that choice.

The ``conn_id`` param names an Airflow connection; its type decides the API (DESIGN, Providers):
``anthropic`` is Anthropic's Message Batches (:class:`openai_batch.anthropic_hook.AnthropicBatchHook`),
anything else is OpenAI's Batch API (:class:`openai_batch.hooks.OpenAIBatchHook`), at OpenAI or at
Azure OpenAI's v1 API (same calls; Azure's own limits). The endpoint a provider's lines go to
follows from the provider here too; its limits are ``limits.PROVIDER_LIMITS``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from openai_batch import anthropic_format

if TYPE_CHECKING:
    from openai_batch.provider import BatchProvider

Provider = Literal["openai", "azure", "anthropic"]

#: Connection types whose API is Anthropic's Message Batches.
_ANTHROPIC_TYPES = frozenset({"anthropic"})

#: Hosts of Azure OpenAI's endpoints (``https://<resource>.openai.azure.com/openai/v1/`` and the
#: Foundry names of the same API).
_AZURE_HOSTS = (".openai.azure.com", ".cognitiveservices.azure.com", ".services.ai.azure.com")


def provider_of_connection(conn_type: str | None, host: str | None, extra: dict[str, Any]) -> Provider:
    """
    Return the provider a connection stands for.

    ``anthropic`` by its type; ``azure`` for an ``openai`` connection whose host is an Azure OpenAI
    endpoint or whose extra says ``{"azure": true}`` (or ``"api_type": "azure"``); else ``openai``.
    """
    if (conn_type or "").lower() in _ANTHROPIC_TYPES:
        return "anthropic"
    if str(extra.get("azure")).lower() == "true" or str(extra.get("api_type") or "").lower() == "azure":
        return "azure"
    from urllib.parse import urlsplit

    url = host or ""
    hostname = (urlsplit(url if "//" in url else f"//{url}").hostname or "").lower()
    return "azure" if hostname.endswith(_AZURE_HOSTS) else "openai"


#: What the DAG's ``endpoint`` param defaults to; on an Anthropic connection it means Anthropic's.
DEFAULT_ENDPOINT = "/v1/chat/completions"


class ProviderMismatchError(ValueError):
    """Raise when the params ask a provider for something only another provider has."""


def provider_of(conn_id: str) -> Provider:
    """Return the provider of connection ``conn_id`` (``openai`` when there is none: the env keys it)."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:  # no connection: OpenAI's, keyed by OPENAI_API_KEY
        return "openai"
    return provider_of_connection(conn.conn_type, conn.host, conn.extra_dejson)


def price_models(conn_id: str, provider: str) -> dict[str, str]:
    """
    Return the model each deployment of an Azure connection runs, for prices (``{}`` elsewhere).

    On Azure a request's ``model`` names a deployment; the connection's extra maps deployment names
    to models: ``{"azure": true, "deployments": {"prod-4o": "gpt-4o"}}``. A deployment not listed
    is priced as a model of its own name (deployments are often named so).

    :raises ProviderMismatchError: ``deployments`` is not an object of names to model names.
    """
    if provider != "azure":
        return {}
    from airflow.sdk import BaseHook

    try:
        extra = BaseHook.get_connection(conn_id).extra_dejson
    except Exception:  # noqa: BLE001 - no connection, no mapping
        return {}
    found = extra.get("deployments") or {}
    pairs = found.items() if isinstance(found, dict) else [(None, None)]
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in pairs):
        raise ProviderMismatchError(
            f"connection {conn_id!r}: extra 'deployments' must map deployment names to model names, "
            'e.g. {"prod-4o": "gpt-4o"}'
        )
    return {k: v for k, v in found.items() if k != v}


def endpoint_for(provider: str, endpoint: str | None) -> str:
    """
    Return the endpoint a run's lines go to on ``provider``.

    On Anthropic, the default (or empty) endpoint means Anthropic's Messages API; an OpenAI endpoint
    asked for explicitly is refused, as is Anthropic's on OpenAI.

    :raises ProviderMismatchError: the endpoint belongs to the other provider.
    """
    if provider == "anthropic":
        if endpoint in (None, "", DEFAULT_ENDPOINT, anthropic_format.ENDPOINT):
            return anthropic_format.ENDPOINT
        raise ProviderMismatchError(
            f"endpoint {endpoint!r} is OpenAI's; an anthropic connection sends {anthropic_format.ENDPOINT}"
        )
    if endpoint == anthropic_format.ENDPOINT:
        raise ProviderMismatchError(
            f"endpoint {endpoint} is Anthropic's Messages API: set conn_id to an anthropic connection"
        )
    return endpoint or DEFAULT_ENDPOINT


def batch_hook(conn_id: str, provider: str | None = None, **kwargs: Any) -> BatchProvider:
    """Return the hook for ``conn_id``'s API; ``provider`` skips the connection lookup when known."""
    if (provider or provider_of(conn_id)) == "anthropic":
        from openai_batch.anthropic_hook import AnthropicBatchHook

        return AnthropicBatchHook(conn_id=conn_id, **kwargs)
    from openai_batch.hooks import OpenAIBatchHook

    return OpenAIBatchHook(conn_id=conn_id, **kwargs)
