"""Server settings and fault-injection configuration, shared by the CLI, the app and the test helpers."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openai_emulator.anthropic_models import CLAUDE_MODELS
from openai_emulator.corruption import CORRUPTIONS
from openai_emulator.webhooks import SECRET_ENV, check_secret, check_urls, resolve_secret

# Every model of the plugin's price table (plugins/openai_batch/pricing.py) and of samples/, plus
# image and video models that have no per-token price. The emulator runs without the plugin (its image
# holds only this package), so the list is kept here; tests/emulator/test_emu_models_strict.py fails
# when the price table or the samples name a model this list lacks.
DEFAULT_MODELS = (
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
    "gpt-4-turbo",
    "gpt-4",
    "gpt-3.5-turbo",
    "gpt-3.5-turbo-instruct",
    "o1",
    "o1-mini",
    "o3",
    "o3-mini",
    "o4-mini",
    "text-embedding-3-small",
    "text-embedding-3-large",
    "text-embedding-ada-002",
    "omni-moderation-latest",
    "text-moderation-latest",
    "gpt-image-1",
    "gpt-image-1-mini",
    "dall-e-3",
    "sora-2",
)


def _int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def _str_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _name_map(text: str) -> dict[str, str]:
    """Parse ``name=value,name2=value2`` into a dict."""
    pairs = [part.partition("=") for part in _str_list(text)]
    if not all(name.strip() and sep and value.strip() for name, sep, value in pairs):
        raise ValueError(f"expected name=model pairs separated by commas, got {text!r}")
    return {name.strip(): value.strip() for name, _, value in pairs}


def _opt(help_text: str, parse: Any = None, **kwargs: Any) -> Any:
    """Declare a dataclass field together with its command-line help text and parser."""
    metadata = {"help": help_text, "parse": parse}
    return field(metadata=metadata, **kwargs)


WEBHOOK_RATES = ("webhook_drop_rate", "webhook_duplicate_rate", "webhook_bad_signature_rate")


@dataclass
class FaultConfig:
    """Faults the server injects; changed at run time through ``PUT /_emulator/faults``."""

    error_rate: float = _opt(
        "Fraction (0..1) of /v1 API calls answered with an injected HTTP error.", float, default=0.0
    )
    error_codes: list[int] = _opt(
        "HTTP status codes used for injected errors, comma separated.",
        _int_list,
        default_factory=lambda: [429, 500],
    )
    error_routes: list[str] = _opt(
        "Route patterns (fnmatch, against 'METHOD /path' or '/path') that get injected errors; "
        "empty means every /v1 route.",
        _str_list,
        default_factory=list,
    )
    retry_after_ms: int | None = _opt(
        "If set, injected errors carry a 'retry-after-ms' header with this value.", int, default=None
    )
    latency_ms: float = _opt("Latency in milliseconds added to /v1 API calls.", float, default=0.0)
    latency_routes: list[str] = _opt(
        "Route patterns that get the added latency; empty means every /v1 route.",
        _str_list,
        default_factory=list,
    )
    request_failure_rate: float = _opt(
        "Fraction (0..1) of batch requests that fail inside the batch (written to the error file).",
        float,
        default=0.0,
    )
    request_failure_codes: list[int] = _opt(
        "Status codes of injected per-request failures, comma separated.",
        _int_list,
        default_factory=lambda: [500, 429],
    )
    expire_after_requests: int | None = _opt(
        "Batches created from now on expire after processing this many requests.", int, default=None
    )
    expire_fraction: float | None = _opt(
        "Batches created from now on expire after processing this fraction (0..1) of their requests.",
        float,
        default=None,
    )
    token_limit: int | None = _opt(
        "Cap on enqueued input tokens across in-progress batches; a batch that would exceed it "
        "fails with token_limit_exceeded.",
        int,
        default=None,
    )
    lost_response_rate: float = _opt(
        "Fraction (0..1) of /v1 API calls that take effect (a file stored, a batch created) and then "
        "lose their answer, as a proxy or a network cut would.",
        float,
        default=0.0,
    )
    lost_response_routes: list[str] = _opt(
        "Route patterns that lose answers; empty means every /v1 route.",
        _str_list,
        default_factory=list,
    )
    lost_response_code: int = _opt(
        "How an answer is lost: an HTTP status code sent instead (e.g. 502), or 0 to cut the "
        "connection in the middle of the answer.",
        int,
        default=502,
    )
    hold_in_progress: bool = _opt(
        "Keep every in-progress batch from processing requests until switched off again, so tests "
        "can have several batches in flight together.",
        None,
        default=False,
    )
    hold_models: list[str] = _opt(
        "Keep in-progress batches of these models from processing requests until the list no longer "
        "names them (a slow model next to fast ones).",
        _str_list,
        default_factory=list,
    )
    output_corruption: list[str] = _opt(
        "Corruptions of the output file of the next batches to run, comma separated, each once per "
        "batch (in its first chunk): 'drop' leaves one answer out, 'duplicate' writes one twice, "
        "'foreign' adds one for a custom_id never sent, 'without_id' adds one without custom_id, "
        "'unparseable' adds a line that is not JSON. The request counts still say every request "
        "was answered.",
        _str_list,
        default_factory=list,
    )
    output_corruption_batches: int = _opt(
        "How many batches get output_corruption; each corrupted batch lowers it by one.", int, default=1
    )
    webhook_drop_rate: float = _opt(
        "Fraction (0..1) of webhook deliveries never sent (no attempt at all).", float, default=0.0
    )
    webhook_delay_ms: float = _opt(
        "Milliseconds a webhook delivery waits before its first attempt.", float, default=0.0
    )
    webhook_duplicate_rate: float = _opt(
        "Fraction (0..1) of webhook deliveries sent twice, with the same webhook-id and body.",
        float,
        default=0.0,
    )
    webhook_bad_signature_rate: float = _opt(
        "Fraction (0..1) of webhook deliveries signed with a wrong key.", float, default=0.0
    )
    webhook_reorder: bool = _opt(
        "Hold webhook deliveries for webhook_delay_ms, then send them newest first, so a later batch's "
        "event arrives before an earlier one's.",
        None,
        default=False,
    )
    seed: int = _opt("Seed of the random generator that decides injected faults.", int, default=0)

    def to_dict(self) -> dict[str, Any]:
        """Return the configuration as a JSON-ready dict."""
        return dataclasses.asdict(self)

    def updated(self, changes: dict[str, Any]) -> FaultConfig:
        """Return a copy with ``changes`` applied; raise ``ValueError`` on unknown or invalid fields."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ValueError(f"Unknown fault fields: {', '.join(unknown)}")
        merged = {**self.to_dict(), **changes}
        new = FaultConfig(**merged)
        new.check()
        return new

    def check(self) -> None:
        """Raise ``ValueError`` when a field is out of range."""
        rates = ("error_rate", "request_failure_rate", "lost_response_rate", *WEBHOOK_RATES)
        for name in rates:
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} must be a number between 0 and 1")
        if self.expire_fraction is not None and not 0.0 <= float(self.expire_fraction) <= 1.0:
            raise ValueError("expire_fraction must be between 0 and 1")
        for name in ("error_codes", "request_failure_codes"):
            codes = getattr(self, name)
            if not isinstance(codes, list) or not codes or not all(isinstance(c, int) for c in codes):
                raise ValueError(f"{name} must be a non-empty list of integers")
        kinds = self.output_corruption
        if not isinstance(kinds, list) or not all(k in CORRUPTIONS for k in kinds):
            raise ValueError(f"output_corruption must be a list of: {', '.join(CORRUPTIONS)}")
        if not isinstance(self.output_corruption_batches, int) or self.output_corruption_batches < 0:
            raise ValueError("output_corruption_batches must be an integer >= 0")
        for name in ("error_routes", "latency_routes", "lost_response_routes"):
            routes = getattr(self, name)
            if not isinstance(routes, list) or not all(isinstance(r, str) for r in routes):
                raise ValueError(f"{name} must be a list of strings")
        delay = self.webhook_delay_ms
        if isinstance(delay, bool) or not isinstance(delay, int | float) or delay < 0:
            raise ValueError("webhook_delay_ms must be a number >= 0")
        if not isinstance(self.webhook_reorder, bool):
            raise ValueError("webhook_reorder must be true or false")


@dataclass
class EmulatorSettings:
    """Static server settings, fixed at start-up."""

    data_dir: Path = _opt(
        "Directory holding all state (files and the metadata database).", Path, default=Path("data")
    )
    host: str = _opt("Interface to bind.", str, default="127.0.0.1")
    port: int = _opt("Port to bind (0 picks a free port).", int, default=8800)
    api_key: str | None = _opt(
        "If set, /v1 requests must carry exactly this bearer key; otherwise any non-empty key is accepted.",
        str,
        default=None,
    )
    backend: str = _opt(
        "Backend answering batch requests: 'echo' (deterministic) or 'proxy'.", str, default="echo"
    )
    upstream_base_url: str | None = _opt(
        "Proxy backend: base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:11434/v1.",
        str,
        default=None,
    )
    upstream_api_key: str | None = _opt("Proxy backend: bearer key sent upstream.", str, default=None)
    proxy_concurrency: int = _opt("Proxy backend: concurrent upstream requests.", int, default=8)
    proxy_retries: int = _opt("Proxy backend: retries on 429, 5xx and connection errors.", int, default=3)
    proxy_timeout: float = _opt(
        "Proxy backend: timeout in seconds per upstream request.", float, default=600.0
    )
    validating_seconds: float = _opt("Seconds a batch stays 'validating'.", float, default=0.2)
    requests_per_second: float = _opt(
        "Rate at which batch requests are processed (0 means as fast as possible).", float, default=2000.0
    )
    finalizing_seconds: float = _opt("Seconds a batch stays 'finalizing'.", float, default=0.1)
    cancelling_seconds: float = _opt("Seconds a batch stays 'cancelling'.", float, default=0.1)
    completion_window_seconds: float = _opt(
        "Seconds after creation at which an unfinished batch expires (the '24h' window).",
        float,
        default=86400.0,
    )
    chunk_size: int = _opt("Requests processed between two progress checkpoints.", int, default=500)
    max_input_file_bytes: int = _opt(
        "Largest accepted upload with purpose 'batch', in bytes.", int, default=200 * 1024 * 1024
    )
    max_file_bytes: int = _opt(
        "Largest accepted upload of any purpose, in bytes (OpenAI's 512 MB per file).",
        int,
        default=512 * 1024 * 1024,
    )
    max_requests_per_batch: int = _opt("Most requests in one batch input file.", int, default=50_000)
    max_embedding_inputs: int = _opt(
        "Most embedding inputs across all requests of one embeddings batch.", int, default=50_000
    )
    azure_deployments: dict[str, str] | None = _opt(
        "Azure paths (/openai/v1): the deployments, as name=model pairs, comma separated (also settable "
        "via PUT /_emulator/azure/deployments); a batch whose requests name another deployment fails with "
        "model_not_found. Unset, every model of --models is a deployment of its own name.",
        _name_map,
        default=None,
    )
    azure_max_requests_per_batch: int = _opt(
        "Azure paths: most requests in one batch input file.", int, default=100_000
    )
    azure_max_batch_files: int = _opt(
        "Azure paths: most batch input files without an expiry the resource keeps.", int, default=500
    )
    azure_max_expiring_batch_files: int = _opt(
        "Azure paths: most batch input files in all, when uploads set expires_after.", int, default=10_000
    )
    models: list[str] = _opt(
        "Model ids listed by /v1/models, comma separated.",
        _str_list,
        default_factory=lambda: list(DEFAULT_MODELS),
    )
    strict_models: bool = _opt(
        "Fail batches whose model is neither in --models nor a dated snapshot of one "
        "(gpt-4o-2024-08-06) with model_not_found, as the service fails a misspelt model; "
        "make run and docker-compose.yaml turn it on.",
        None,
        default=False,
    )
    anthropic_models: list[str] = _opt(
        "Model ids the Message Batches API (/v1/messages/batches) knows, comma separated; with "
        "--strict-models a request naming another model (or a dated snapshot of none) ends errored "
        "with not_found_error.",
        _str_list,
        default_factory=lambda: list(CLAUDE_MODELS),
    )
    embedding_dimensions: int = _opt("Echo backend: length of embedding vectors.", int, default=8)
    log_level: str = _opt("Log level.", str, default="info")
    webhook_urls: list[str] = _opt(
        "URLs that get a signed event (batch.completed, batch.failed, batch.expired, batch.cancelled) "
        "when a batch ends, comma separated; empty means no webhooks.",
        _str_list,
        default_factory=list,
    )
    webhook_secret: str | None = _opt(
        f"Secret (whsec_<base64>) that signs webhook deliveries; with --webhook-urls and no secret, "
        f"{SECRET_ENV} is read, and without either the emulator refuses to start.",
        str,
        default=None,
    )
    webhook_timeout: float = _opt("Seconds each webhook delivery attempt may take.", float, default=10.0)
    webhook_max_attempts: int = _opt(
        "Attempts per webhook delivery (non-2xx answers and connection errors are retried).", int, default=6
    )
    webhook_retry_seconds: float = _opt(
        "Wait before the first webhook retry; it doubles after each further failed attempt.",
        float,
        default=1.0,
    )
    faults: FaultConfig = field(default_factory=FaultConfig)

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> EmulatorSettings:
        """Build settings from flat keyword arguments (fault fields included), as the CLI flags name them."""
        fault_names = {f.name for f in dataclasses.fields(FaultConfig)}
        fault_kwargs = {k: v for k, v in kwargs.items() if k in fault_names}
        own = {k: v for k, v in kwargs.items() if k not in fault_names}
        if "data_dir" in own:
            own["data_dir"] = Path(own["data_dir"])
        faults = FaultConfig(**fault_kwargs)
        faults.check()
        settings = cls(**own, faults=faults)
        settings.check()
        return settings

    def check(self) -> None:
        """Raise ``ValueError`` when the webhook settings cannot work (the message never shows the secret)."""
        self.webhook_urls = check_urls(self.webhook_urls)
        if self.webhook_secret:  # an empty value counts as not given
            check_secret(self.webhook_secret)
        if self.webhook_urls and resolve_secret(self.webhook_secret) is None:
            raise ValueError(
                f"--webhook-urls needs a signing secret: pass --webhook-secret whsec_... or set {SECRET_ENV}."
            )
        if not self.webhook_timeout > 0:
            raise ValueError("--webhook-timeout must be > 0")
        if self.webhook_max_attempts < 1:
            raise ValueError("--webhook-max-attempts must be >= 1")
        if self.webhook_retry_seconds < 0:
            raise ValueError("--webhook-retry-seconds must be >= 0")


def _add_fields(parser: argparse._ArgumentGroup, cls: type[Any]) -> None:
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc,operator]
        help_text = f"{f.metadata['help']} (default: {default})"
        if f.metadata["parse"] is None:
            parser.add_argument(flag, dest=f.name, action="store_true", help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, type=f.metadata["parse"], default=None, help=help_text)


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser; every setting and fault field is a flag."""
    parser = argparse.ArgumentParser(
        prog="python -m openai_emulator",
        description="Serve the OpenAI Files and Batches API locally, with fault injection.",
    )
    server = parser.add_argument_group("server")
    _add_fields(server, EmulatorSettings)
    faults = parser.add_argument_group("fault injection (also settable via PUT /_emulator/faults)")
    _add_fields(faults, FaultConfig)
    return parser


def settings_from_args(argv: list[str] | None = None) -> EmulatorSettings:
    """Parse command-line arguments into settings."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    given = {k: v for k, v in args.items() if v is not None and v is not False}
    try:
        return EmulatorSettings.from_kwargs(**given)
    except ValueError as exc:
        parser.error(str(exc))  # exits with status 2 and the message, not a traceback
