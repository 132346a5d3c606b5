"""`corral serve`: the OpenAI-compatible server (FastAPI + uvicorn; the engine core runs in its
own process). SIGTERM or Ctrl-C drains: no new requests, running ones finish, then exit."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from corral.cluster.launcher import add_replica_arguments
from corral.cluster.ray_cli import add_ray_arguments
from corral.engine.engine_args import add_engine_arguments, engine_config_from_args
from corral.serve.cache_isolation import CACHE_ISOLATION_MODES
from corral.serve.config import ServerConfig

logger = logging.getLogger(__name__)

API_KEY_ENV = "CORRAL_API_KEY"
RUNTIME_LORA_ENV = "CORRAL_ALLOW_RUNTIME_LORA_UPDATING"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = ServerConfig()
    group = parser.add_argument_group("server")
    group.add_argument("--host", default=defaults.host, help="address to bind (default: loopback)")
    group.add_argument("--port", type=int, default=defaults.port)
    group.add_argument(
        "--api-key",
        action="append",
        default=None,
        help=f"require 'Authorization: Bearer KEY' on every endpoint but /health; repeat for "
        f"several keys (default: env {API_KEY_ENV}, comma-separated)",
    )
    group.add_argument(
        "--served-model-name", default=None, help="model id in the API (default: directory name)"
    )
    group.add_argument(
        "--max-queued-requests",
        type=int,
        default=None,
        help="requests (samples) admitted but not yet scheduled; past it: 503 + Retry-After",
    )
    group.add_argument(
        "--max-queued-tokens",
        type=int,
        default=None,
        help="prompt tokens of requests admitted but not yet scheduled; past it: 503",
    )
    group.add_argument(
        "--heartbeat-timeout-s",
        type=float,
        default=defaults.heartbeat_timeout_s,
        help="declare the engine dead when its process sends no heartbeat this long",
    )
    group.add_argument(
        "--step-timeout-s",
        type=float,
        default=defaults.step_timeout_s,
        help="declare the engine dead when one step runs longer (0: never)",
    )
    group.add_argument(
        "--max-request-body-bytes",
        type=int,
        default=defaults.max_request_body_bytes,
        help="larger bodies get 413",
    )
    group.add_argument(
        "--drain-timeout-s",
        type=float,
        default=defaults.drain_timeout_s,
        help="on SIGTERM, wait this long for running requests before cancelling them",
    )
    group.add_argument(
        "--log-requests", action="store_true", help="log prompts and outputs (off by default)"
    )
    group.add_argument(
        "--cache-isolation",
        choices=CACHE_ISOLATION_MODES,
        default=defaults.cache_isolation,
        help="separate prefix caches per tenant so no client can time another's prompts: "
        "api-key (per key), user (per `user` field, else key); default none",
    )
    group.add_argument("--no-access-log", action="store_true", help="no per-request access log")
    group.add_argument(
        "--tool-call-parser",
        default=defaults.tool_call_parser,
        help="how the model writes tool calls: hermes (<tool_call> JSON, Qwen and the demo "
        "model), llama3_json, mistral ([TOOL_CALLS]); 'none' refuses tools",
    )
    group.add_argument(
        "--reasoning-parser",
        default=None,
        help="separate reasoning_content: think (<think>...</think> written by the model) or "
        "deepseek_r1 (the prompt opens <think>); default off",
    )
    group.add_argument(
        "--otlp-traces-endpoint",
        default=None,
        help="export one OpenTelemetry trace per request (queue, prefill, decode spans) over "
        "OTLP/HTTP to this URL, e.g. http://localhost:4318/v1/traces (default off)",
    )
    group.add_argument(
        "--dashboard-interval-ms",
        type=int,
        default=500,
        help="the live /dashboard page's refresh: an engine snapshot at most this often while "
        "a page is open, nothing while none is (default 500; 0 turns /dashboard off)",
    )
    group.add_argument(
        "--allow-runtime-lora-updating",
        action="store_true",
        help="answer POST /v1/load_lora_adapter and /v1/unload_lora_adapter (needs "
        f"--enable-lora; default: env {RUNTIME_LORA_ENV}=1, else off)",
    )
    add_engine_arguments(parser)
    add_replica_arguments(parser)
    add_ray_arguments(parser)


def server_config_from_args(args: argparse.Namespace) -> ServerConfig:
    keys = list(args.api_key or [])
    if not keys and os.environ.get(API_KEY_ENV):
        keys = [key.strip() for key in os.environ[API_KEY_ENV].split(",") if key.strip()]
    return ServerConfig(
        host=args.host,
        port=args.port,
        api_keys=tuple(keys),
        max_queued_requests=args.max_queued_requests,
        max_queued_tokens=args.max_queued_tokens,
        heartbeat_timeout_s=args.heartbeat_timeout_s,
        step_timeout_s=args.step_timeout_s or None,
        max_request_body_bytes=args.max_request_body_bytes,
        log_requests=args.log_requests,
        served_model_name=args.served_model_name,
        drain_timeout_s=args.drain_timeout_s,
        cache_isolation=args.cache_isolation,
        tool_call_parser=None if args.tool_call_parser == "none" else args.tool_call_parser,
        reasoning_parser=args.reasoning_parser,
        otlp_traces_endpoint=args.otlp_traces_endpoint,
        dashboard_interval_ms=args.dashboard_interval_ms,
        allow_runtime_lora_updating=args.allow_runtime_lora_updating
        or os.environ.get(RUNTIME_LORA_ENV, "").lower() in ("1", "true"),
    )


def run(args: argparse.Namespace) -> int:
    if getattr(args, "ray", False):  # replicas as a Ray Serve application
        from corral.cluster.ray_cli import run_ray

        return run_ray(args)
    if getattr(args, "replicas", 1) != 1 or getattr(args, "prefill_replicas", 0):
        # N engines (prefill and decode ones when disaggregated) and the router in front
        from corral.cluster.launcher import run_replicas

        return run_replicas(args)
    from corral.engine.async_llm import AsyncLLM
    from corral.serve.app import build_app
    from corral.serve.server import serve

    try:
        config = server_config_from_args(args)
        engine_config = engine_config_from_args(args)
    except ValueError as error:  # a flag combination refused before anything starts
        print(f"corral serve: {error}", file=sys.stderr)
        return 2
    engine = AsyncLLM(
        engine_config,
        multiprocess=True,
        heartbeat_timeout_s=config.heartbeat_timeout_s,
        step_timeout_s=config.step_timeout_s,
        max_queued_requests=config.max_queued_requests,
        max_queued_tokens=config.max_queued_tokens,
    )
    app = build_app(engine, config)
    if config.api_keys:
        logger.info("API key required (%d key(s) configured)", len(config.api_keys))
    started = serve(
        app,
        config,
        log_level=getattr(args, "log_level", "INFO").lower(),
        access_log=not args.no_access_log,
    )
    return 0 if started else 1
