"""`corral router`: an OpenAI-compatible front over several `corral serve` replicas (or any
server with the same API), routing each request by a policy of corral/cluster/routing.py.
With --prefill-backend and --decode-backend instead of --backend, it disaggregates prefill and
decode (corral/cluster/disaggregated.py). SIGTERM or Ctrl-C: stop accepting, let the requests
in flight finish (--drain-timeout-s)."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from pathlib import Path

from corral.cluster.migration import MigrationConfig
from corral.cluster.replicas import DEFAULT_BLOCK_SIZE, DEFAULT_NUM_BLOCKS
from corral.cluster.router_app import RouterConfig

logger = logging.getLogger(__name__)

API_KEY_ENV = "CORRAL_API_KEY"
DEFAULT_POLICY = "least-outstanding"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("router")
    group.add_argument(
        "--backend",
        action="append",
        default=[],
        metavar="URL",
        help="a replica's base URL (http://host:port); repeat for each replica",
    )
    group.add_argument(
        "--prefill-backend",
        action="append",
        default=[],
        metavar="URL",
        help="disaggregated mode, with --decode-backend instead of --backend: a prefill "
        "replica's base URL (corral serve --kv-role prefill); repeat for each",
    )
    group.add_argument(
        "--decode-backend",
        action="append",
        default=[],
        metavar="URL",
        help="disaggregated mode: a decode replica's base URL (corral serve --kv-role decode); "
        "repeat for each",
    )
    add_routing_arguments(group)
    group.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    group.add_argument("--port", type=int, default=8000)
    group.add_argument(
        "--tokenizer",
        default=None,
        metavar="MODEL_DIR",
        help="model directory whose tokenizer and chat template turn prompts into tokens, for "
        "prefix-aware (default: the replicas' model directory, when it is on this machine)",
    )
    group.add_argument(
        "--backend-api-key",
        default=None,
        help=f"bearer key for the router's own /metrics scrapes (default: env {API_KEY_ENV}, "
        "its first key); clients' Authorization headers are forwarded as sent",
    )
    group.add_argument("--drain-timeout-s", type=float, default=30.0)
    group.add_argument(
        "--dashboard-interval-ms",
        type=int,
        default=500,
        help="the live /dashboard page's refresh while a page is open (default 500; 0: off)",
    )
    group.add_argument("--no-access-log", action="store_true", help="no per-request access log")
    group.add_argument(
        "--kv-events",
        action="append",
        default=[],
        metavar="ENDPOINT[,REPLAY]",
        help="a replica's KV-event stream (its --kv-events-config endpoint and replay "
        "endpoint, e.g. tcp://host:5557,tcp://host:5558); once per --backend (or "
        "--decode-backend), in the same order: prefix-aware then routes by what the replicas "
        "report they cache",
    )
    group.add_argument(
        "--prefill-kv-events",
        action="append",
        default=[],
        metavar="ENDPOINT[,REPLAY]",
        help="as --kv-events, once per --prefill-backend, in the same order",
    )
    group.add_argument("--kv-events-topic", default="", help="the replicas' KV-event topic")
    group.add_argument(
        "--kv-medium-weights",
        type=parse_medium_weights,
        default=(),
        metavar="MEDIUM=W,...",
        help="a reported block's worth in prefix-aware matches by the medium holding it, each "
        "in [0, 1] (default GPU=1,CPU=0.8,DISK=0.5: a host or disk copy saves its recompute less "
        "the cost of bringing it back; docs/router.md)",
    )
    group.add_argument(
        "--kv-events-hash-format",
        choices=("int", "bytes"),
        default="int",
        help="how the replicas send block hashes (their block_hash_format; default int)",
    )


def parse_medium_weights(text: str) -> tuple[tuple[str, float], ...]:
    """ "GPU=1,CPU=0.8,DISK=0.5" -> (("GPU", 1.0), ...); each weight in [0, 1]."""
    weights = []
    for item in text.split(","):
        medium, sep, value = item.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = float("nan")
        if not sep or not medium.strip() or not 0.0 <= weight <= 1.0:
            raise argparse.ArgumentTypeError(
                f"--kv-medium-weights item {item!r} is not MEDIUM=W with W in [0, 1]"
            )
        weights.append((medium.strip(), weight))
    return tuple(weights)


def add_routing_arguments(group: argparse._ArgumentGroup) -> None:
    """The routing, health and failover flags (shared with `corral serve --replicas`)."""
    from corral.cluster.routing import ROUTER_POLICIES

    defaults = RouterConfig(backend_urls=("http://-",))
    group.add_argument(
        "--policy",
        choices=ROUTER_POLICIES.names(),
        default=DEFAULT_POLICY,
        help=f"routing policy (default {DEFAULT_POLICY}; docs/router.md)",
    )
    group.add_argument(
        "--poll-interval-s",
        type=float,
        default=defaults.poll_interval_s,
        help="check each replica's /health and scrape its /metrics this often",
    )
    group.add_argument(
        "--health-timeout-s",
        type=float,
        default=defaults.health_timeout_s,
        help="a /health check not answered 200 within this fails",
    )
    group.add_argument(
        "--unhealthy-after",
        type=int,
        default=defaults.unhealthy_after,
        help="failed checks in a row that take a replica out of the rotation",
    )
    group.add_argument(
        "--healthy-after",
        type=int,
        default=defaults.healthy_after,
        help="healthy checks in a row that bring a replica that left back",
    )
    group.add_argument(
        "--max-retries",
        type=int,
        default=defaults.max_retries,
        help="moves of a request to another replica when one fails before answering",
    )
    group.add_argument(
        "--router-block-size",
        type=int,
        default=None,
        help=f"the replicas' KV block size for prefix-aware, until they report it in /metrics "
        f"(default {DEFAULT_BLOCK_SIZE})",
    )
    group.add_argument(
        "--router-num-blocks",
        type=int,
        default=None,
        help=f"the replicas' KV pool size, bounding prefix-aware's estimate of each cache "
        f"(default {DEFAULT_NUM_BLOCKS})",
    )
    group.add_argument(
        "--migration",
        action="store_true",
        help="live migration: continue requests a replica moves out on another replica "
        "(replicas need --kv-role both to move KV rather than recompute; docs/disaggregation.md)",
    )
    group.add_argument(
        "--rebalance-kv-usage",
        type=float,
        default=None,
        help="with --migration: move the largest request off a replica whose KV usage is at or "
        "above this fraction to the least loaded one (default: only POST /admin/drain moves)",
    )
    group.add_argument(
        "--no-precopy",
        action="store_true",
        help="with --migration: stop a moving request at once and copy all its KV then, "
        "instead of copying its blocks while it runs and stopping it for the rest only",
    )
    group.add_argument(
        "--rebalance-interval-s",
        type=float,
        default=MigrationConfig().interval_s,
        help="with --migration: how often draining and KV pressure are acted on",
    )
    group.add_argument(
        "--max-imbalance",
        type=int,
        default=None,
        help="prefix-aware: outstanding requests above the least loaded replica past which "
        "the replica holding the prefix is passed over",
    )


def backend_pools(args: argparse.Namespace) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(backend or decode URLs, prefill URLs) from --backend, or from --prefill-backend and
    --decode-backend (disaggregated); ValueError naming the flags when they do not fit."""
    backends, prefill, decode = args.backend, args.prefill_backend, args.decode_backend
    if backends and (prefill or decode):
        raise ValueError(
            "--backend cannot be mixed with --prefill-backend / --decode-backend: give "
            "--backend URLs for a plain router, or both --prefill-backend and "
            "--decode-backend URLs for a disaggregated one"
        )
    if prefill and not decode:
        raise ValueError(
            "disaggregated mode needs --decode-backend URLs too (only --prefill-backend given)"
        )
    if decode and not prefill:
        raise ValueError(
            "disaggregated mode needs --prefill-backend URLs too (only --decode-backend given)"
        )
    if not (backends or decode):
        raise ValueError(
            "give --backend URL (repeatable), or --prefill-backend URL and --decode-backend URL "
            "(each repeatable) for disaggregated prefill/decode"
        )
    if args.prefill_kv_events and not prefill:
        raise ValueError("--prefill-kv-events needs --prefill-backend URLs")
    return tuple(backends or decode), tuple(prefill)


def router_config_from_args(
    args: argparse.Namespace, backend_urls: tuple[str, ...], **overrides: object
) -> RouterConfig:
    key = getattr(args, "backend_api_key", None) or os.environ.get(API_KEY_ENV, "")
    fields: dict[str, object] = dict(
        backend_urls=backend_urls,
        policy=args.policy,
        host=args.host,
        port=args.port,
        poll_interval_s=args.poll_interval_s,
        health_timeout_s=args.health_timeout_s,
        unhealthy_after=args.unhealthy_after,
        healthy_after=args.healthy_after,
        max_retries=args.max_retries,
        backend_api_key=key.split(",")[0].strip() or None,
        block_size=args.router_block_size or DEFAULT_BLOCK_SIZE,
        num_blocks=args.router_num_blocks or DEFAULT_NUM_BLOCKS,
        max_imbalance=args.max_imbalance,
        kv_events=tuple(getattr(args, "kv_events", ())),
        kv_events_topic=getattr(args, "kv_events_topic", ""),
        kv_events_hash_format=getattr(args, "kv_events_hash_format", "int"),
        kv_medium_weights=getattr(args, "kv_medium_weights", ()),
        migration=migration_config_from_args(args),
        dashboard_interval_ms=getattr(args, "dashboard_interval_ms", 500),
    )
    fields.update(overrides)
    return RouterConfig(**fields)  # type: ignore[arg-type]


def migration_config_from_args(args: argparse.Namespace) -> MigrationConfig:
    enabled = bool(getattr(args, "migration", False))
    usage = getattr(args, "rebalance_kv_usage", None)
    if usage is not None and not enabled:
        raise ValueError("--rebalance-kv-usage needs --migration")
    interval = getattr(args, "rebalance_interval_s", MigrationConfig().interval_s)
    precopy = not getattr(args, "no_precopy", False)
    return MigrationConfig(enabled, usage, interval_s=interval, precopy=precopy)


def run(args: argparse.Namespace) -> int:
    try:
        backend_urls, prefill_urls = backend_pools(args)
        config = router_config_from_args(
            args,
            backend_urls,
            prefill_urls=prefill_urls,
            prefill_kv_events=tuple(args.prefill_kv_events),
        )
        tokenizer = load_tokenizer(config, args.tokenizer)
    except ValueError as error:
        print(f"corral router: {error}", file=sys.stderr)
        return 2
    started = serve_router(
        config,
        tokenizer,
        log_level=getattr(args, "log_level", "INFO").lower(),
        access_log=not args.no_access_log,
        drain_timeout_s=args.drain_timeout_s,
    )
    return 0 if started else 1


def load_tokenizer(config: RouterConfig, model_dir: str | None):  # noqa: ANN201
    """The tokenizer the policy needs (None for load-only policies); ValueError when a
    prefix-aware router has none: not given and no replica names a local model directory."""
    from corral.cluster.router_prompts import PROMPT_POLICIES
    from corral.engine.tokenizer import Tokenizer

    if config.policy not in PROMPT_POLICIES:
        return None
    if model_dir is None:
        model_dir = _replica_model_dir(config)
    if model_dir is None:
        raise ValueError(
            f"--policy {config.policy} tokenizes prompts: give --tokenizer MODEL_DIR (no "
            "replica answered /v1/models with a model directory on this machine)"
        )
    logger.info("tokenizing prompts for routing with %s", model_dir)
    return Tokenizer(model_dir)


def _replica_model_dir(config: RouterConfig) -> str | None:
    import httpx

    headers = (
        {"Authorization": f"Bearer {config.backend_api_key}"} if config.backend_api_key else {}
    )
    for url in (*config.backend_urls, *config.prefill_urls):
        try:
            response = httpx.get(url.rstrip("/") + "/v1/models", headers=headers, timeout=5.0)
            root = response.json()["data"][0]["root"]
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError):
            continue
        if isinstance(root, str) and Path(root).is_dir():
            return root
    return None


def serve_router(
    config: RouterConfig,
    tokenizer: object = None,
    *,
    log_level: str = "info",
    access_log: bool = True,
    drain_timeout_s: float = 30.0,
) -> bool:
    """Serve until SIGTERM / Ctrl-C and drained; False if it never started."""
    import uvicorn

    from corral.cluster.router_app import build_router_app
    from corral.serve.server import ClosingServer, run_until_drained

    app = build_router_app(config, tokenizer)  # type: ignore[arg-type]
    server = ClosingServer(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level=log_level,
            access_log=access_log,
            timeout_graceful_shutdown=math.ceil(drain_timeout_s),
        )
    )
    return run_until_drained(server)
