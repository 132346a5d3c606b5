"""ServerConfig: what `corral serve` adds to the engine's options."""

from __future__ import annotations

from dataclasses import dataclass, field

from corral.serve.cache_isolation import CACHE_ISOLATION_MODES


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """What `corral serve` adds to the engine's options."""

    host: str = "127.0.0.1"
    port: int = 8000
    # Never shown in a repr or a log.
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    max_queued_requests: int | None = None
    max_queued_tokens: int | None = None
    heartbeat_timeout_s: float = 30.0
    # One engine step (or utility call) running longer than this: the loop is stuck. None: off.
    step_timeout_s: float | None = 300.0
    max_request_body_bytes: int = 16 * 2**20
    log_requests: bool = False
    served_model_name: str | None = None
    drain_timeout_s: float = 120.0
    # Prefix-cache namespace per tenant: none | api-key | user (corral.serve.cache_isolation).
    cache_isolation: str = "none"
    # Finds tool calls in outputs (corral/structured/tool_parsers); None: tools refused.
    tool_call_parser: str | None = "hermes"
    # Separates reasoning_content (corral/structured/reasoning_parsers); None: off.
    reasoning_parser: str | None = None
    # POST /v1/load_lora_adapter and /v1/unload_lora_adapter answer (else 404).
    allow_runtime_lora_updating: bool = False
    # One OpenTelemetry trace per request, exported over OTLP/HTTP here (corral/serve/tracing.py).
    otlp_traces_endpoint: str | None = None
    # The /dashboard page's refresh: the engine's snapshot at most this often while a page is
    # open (corral/serve/dashboard); 0 turns the dashboard off.
    dashboard_interval_ms: int = 500

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.heartbeat_timeout_s <= 0:
            raise ValueError(f"heartbeat_timeout_s must be > 0, got {self.heartbeat_timeout_s}")
        if self.step_timeout_s is not None and self.step_timeout_s <= 0:
            raise ValueError(f"step_timeout_s must be > 0 or None, got {self.step_timeout_s}")
        if self.max_request_body_bytes < 1024:
            raise ValueError(
                f"max_request_body_bytes must be >= 1024, got {self.max_request_body_bytes}"
            )
        if self.cache_isolation not in CACHE_ISOLATION_MODES:
            raise ValueError(
                f"cache_isolation must be one of {CACHE_ISOLATION_MODES}, "
                f"got {self.cache_isolation!r}"
            )
        from corral.structured.reasoning_parsers import REASONING_PARSERS
        from corral.structured.tool_parsers import TOOL_CALL_PARSERS

        if self.tool_call_parser is not None:
            TOOL_CALL_PARSERS.get(self.tool_call_parser)  # ValueError naming the known ones
        if self.reasoning_parser is not None:
            REASONING_PARSERS.get(self.reasoning_parser)
        if self.otlp_traces_endpoint is not None and not self.otlp_traces_endpoint.startswith(
            ("http://", "https://")
        ):
            raise ValueError(
                f"otlp_traces_endpoint must be an http(s) URL, got {self.otlp_traces_endpoint!r}"
            )
        if not (self.dashboard_interval_ms == 0 or 50 <= self.dashboard_interval_ms <= 60_000):
            raise ValueError(
                "dashboard_interval_ms must be 0 (off) or in [50, 60000], got "
                f"{self.dashboard_interval_ms}"
            )
        if any(not key for key in self.api_keys):
            raise ValueError("an API key must not be empty")
        if self.cache_isolation == "api-key" and not self.api_keys:
            raise ValueError(
                "cache isolation 'api-key' needs API keys (--api-key or the environment "
                "variable CORRAL_API_KEY); without them every request would share one cache "
                "namespace"
            )
