"""`corral router`'s application: an OpenAI-compatible front over N corral serve replicas.

POST /v1/completions and /v1/chat/completions go to the replica the routing policy chooses
(corral/cluster/routing.py, the simulator's code) with failover (corral/cluster/proxy.py);
GET /v1/models and /version, POST /tokenize and /detokenize go to the least loaded healthy
replica. GET /health is 200 while at least one replica is in the rotation; GET /metrics is the
router's own (corral/cluster/router_metrics.py). Errors have corral serve's shape.

With prefill replicas (RouterConfig.prefill_urls) the router is disaggregated: completions run
their prompt on a prefill replica first (corral/cluster/disaggregated.py), and the backend
replicas are the decode pool, which every other route goes to as above.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response

import corral
from corral.cluster.health import ReplicaSet
from corral.cluster.migration import MigratingForwarder, MigrationConfig, MigrationMetrics
from corral.cluster.prefix_index import PrefixIndex
from corral.cluster.proxy import Forwarder, request_headers
from corral.cluster.rebalancer import Rebalancer, install_admin_routes
from corral.cluster.replica_pool import build_pool
from corral.cluster.replicas import DEFAULT_BLOCK_SIZE, DEFAULT_NUM_BLOCKS
from corral.cluster.router_dashboard import install_router_dashboard
from corral.cluster.router_metrics import RouterMetrics
from corral.cluster.router_prompts import PromptReader
from corral.cluster.routing import ROUTER_POLICIES
from corral.engine.tokenizer import Tokenizer
from corral.serve.config import ServerConfig
from corral.serve.errors import APIError, install_error_handlers
from corral.serve.metrics import CONTENT_TYPE
from corral.serve.streaming import run_until_disconnected

logger = logging.getLogger(__name__)

ROUTED = ("/v1/completions", "/v1/chat/completions")


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """`corral router`'s settings (the flags of corral/cluster/router_cli.py). With
    prefill_urls the router is disaggregated and backend_urls are its decode replicas."""

    backend_urls: tuple[str, ...]
    policy: str = "least-outstanding"
    host: str = "127.0.0.1"
    port: int = 8000
    # Every poll_interval_s each replica's /health is checked (a 200 within health_timeout_s
    # counts healthy); unhealthy_after failures in a row take it out, healthy_after successes
    # in a row bring it back.
    poll_interval_s: float = 0.5
    health_timeout_s: float = 2.0
    unhealthy_after: int = 3
    healthy_after: int = 2
    # Moves of one request to another replica before any response byte.
    max_retries: int = 2
    connect_timeout_s: float = 5.0
    # Sent as a bearer token with the router's own /metrics and /v1/models requests.
    backend_api_key: str | None = None
    # The replicas' KV geometry, until they report it in /metrics (prefix-aware only).
    block_size: int = DEFAULT_BLOCK_SIZE
    num_blocks: int = DEFAULT_NUM_BLOCKS
    prefix_hash: str = "sha256"
    max_imbalance: int | None = None  # prefix-aware's option (None: the policy's default)
    # The replicas' KV-event streams, one "ENDPOINT[,REPLAY_ENDPOINT]" per backend, in order
    # (empty: prefix-aware estimates each cache from the prompts routed there instead).
    kv_events: tuple[str, ...] = ()
    kv_events_topic: str = ""
    kv_events_hash_format: str = "int"
    # A reported block's worth by the medium holding it (prefix_index.DEFAULT_MEDIUM_WEIGHTS
    # for the media not named): (("GPU", 1.0), ("CPU", 0.8), ("DISK", 0.5)).
    kv_medium_weights: tuple[tuple[str, float], ...] = ()
    # Prefill replicas (disaggregated mode, docs/router.md) and their KV-event streams.
    prefill_urls: tuple[str, ...] = ()
    prefill_kv_events: tuple[str, ...] = ()
    seed: int = 0
    # Live migration (--migration, --rebalance-*: corral/cluster/migration.py).
    migration: MigrationConfig = MigrationConfig()
    max_request_body_bytes: int = ServerConfig().max_request_body_bytes
    # The live /dashboard page's refresh (corral/cluster/router_dashboard.py); 0: off.
    dashboard_interval_ms: int = ServerConfig().dashboard_interval_ms

    def __post_init__(self) -> None:
        if not self.backend_urls:
            raise ValueError("the router needs at least one --backend URL")
        for url in (*self.backend_urls, *self.prefill_urls):
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"backend URL {url!r} must start with http:// or https://")
        if self.policy not in ROUTER_POLICIES.names():
            raise ValueError(
                f"unknown router policy {self.policy!r}; known: {ROUTER_POLICIES.names()}"
            )
        for name in ("poll_interval_s", "health_timeout_s", "connect_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("unhealthy_after", "healthy_after", "block_size", "num_blocks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if not (self.dashboard_interval_ms == 0 or 50 <= self.dashboard_interval_ms <= 60_000):
            raise ValueError(
                "dashboard_interval_ms must be 0 (off) or in [50, 60000], got "
                f"{self.dashboard_interval_ms}"
            )
        if self.prefill_kv_events and not self.prefill_urls:
            raise ValueError("prefill KV events need prefill replicas (--prefill-backend)")

    @property
    def is_disaggregated(self) -> bool:
        return bool(self.prefill_urls)


def build_router_app(
    config: RouterConfig,
    tokenizer: Tokenizer | None = None,
    prefix_index: PrefixIndex | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    """The router over config.backend_urls (behind config.prefill_urls' prefill legs when
    disaggregated). tokenizer: for policies that read prompts.
    prefix_index: the prefix-aware policy's index (default: its own EstimatedPrefixIndex).
    transport: how to reach the replicas (default: HTTP; tests pass a mock)."""
    metrics = RouterMetrics(with_pool_label=config.is_disaggregated)
    own_headers = (
        {"Authorization": f"Bearer {config.backend_api_key}"} if config.backend_api_key else {}
    )
    client = httpx.AsyncClient(
        timeout=httpx.Timeout(connect=config.connect_timeout_s, read=None, write=60.0, pool=None),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
        transport=transport,
    )
    pool = build_pool(
        config,
        config.backend_urls,
        config.kv_events,
        metrics,
        client,
        headers=own_headers,
        prefix_index=prefix_index,
        pool="decode" if config.is_disaggregated else "",
    )
    replica_set, replicas = pool.replica_set, pool.replicas
    pools = [pool]
    prompts = PromptReader(tokenizer)
    forwarder = Forwarder(replica_set, client, max_retries=config.max_retries)
    migrating = rebalancer = None
    if config.migration.enabled:
        migration_metrics = MigrationMetrics(metrics.registry)
        rebalancer = Rebalancer(
            replica_set,
            client,
            config.migration,
            migration_metrics,
            headers=own_headers,
            scrape_interval_s=config.poll_interval_s,
        )
        migrating = MigratingForwarder(forwarder, migration_metrics, rebalancer.planned)
    disaggregation = None
    if config.is_disaggregated:
        from corral.cluster.disaggregated import build_disaggregation

        disaggregation = build_disaggregation(
            config, metrics, client, forwarder, headers=own_headers
        )
        pools.append(disaggregation.prefill_pool)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        for replica_pool in pools:
            await replica_pool.open()
            logger.info(
                "routing over %d %sreplica(s) (%d healthy), policy %s",
                len(replica_pool.replicas),
                f"{replica_pool.name} " if replica_pool.name else "",
                replica_pool.replica_set.num_available,
                config.policy,
            )
        prompts.base_model_names = await _served_model_names(replica_set, client, own_headers)
        if rebalancer is not None:
            rebalancer.start()
        try:
            yield
        finally:
            if rebalancer is not None:
                await rebalancer.stop()
            if dashboard is not None:
                await dashboard.close()
            for replica_pool in pools:
                await replica_pool.close()
            await client.aclose()

    app = FastAPI(title="corral router", version=corral.__version__, lifespan=lifespan)
    app.state.replica_set = replica_set  # the decode replicas in disaggregated mode
    app.state.metrics = metrics
    app.state.poller = pool.poller
    app.state.prefix_index = pool.prefix_index  # the reported one with --kv-events
    app.state.disaggregation = disaggregation  # None unless disaggregated
    install_error_handlers(app)
    dashboard = install_router_dashboard(
        app, pools, metrics, config.policy, config.dashboard_interval_ms
    )

    async def routed(request: Request) -> Response:
        route = request.url.path
        body = await _read_body(request, config.max_request_body_bytes)
        parse = tokenizer or disaggregation or migrating
        payload = _json_or_none(body) if parse else None
        routing = await prompts.read(route, payload if tokenizer else None)
        headers = request_headers(request.headers)
        if migrating is not None and disaggregation is None:
            work = migrating.forward(route, headers, body, payload, routing)
        elif disaggregation is None:
            work = forwarder.forward("POST", route, headers, body, routing)
        else:
            work = disaggregation.forward(route, headers, body, payload, routing)
        return await run_until_disconnected(request, work, lambda response: response)

    async def passed(request: Request) -> Response:
        body = None
        if request.method == "POST":
            body = await _read_body(request, config.max_request_body_bytes)
        headers = request_headers(request.headers)
        work = forwarder.forward(request.method, request.url.path, headers, body)
        return await run_until_disconnected(request, work, lambda response: response)

    for route in ROUTED:
        app.add_api_route(route, routed, methods=["POST"])
    for route in ("/tokenize", "/detokenize"):
        app.add_api_route(route, passed, methods=["POST"])
    for route in ("/v1/models", "/version"):
        app.add_api_route(route, passed, methods=["GET"])

    @app.get("/health")
    async def health() -> Response:
        if replica_set.num_available == 0:
            raise APIError(
                503,
                f"no replica is healthy ({len(replicas)} configured)",
                code="no_replica_available",
            )
        return Response(status_code=200)

    if rebalancer is not None:
        install_admin_routes(app, replica_set, rebalancer)

    @app.get("/metrics")
    async def router_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return app


async def _read_body(request: Request, max_bytes: int) -> bytes:
    """The raw body (forwarded unchanged); 413 past max_bytes, as corral serve answers."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise APIError(413, f"the request body has {declared} bytes; the limit is {max_bytes}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise APIError(
                413, f"the request body has more than {max_bytes} bytes; the limit is {max_bytes}"
            )
    return bytes(body)


def _json_or_none(body: bytes) -> object:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


async def _served_model_names(
    replica_set: ReplicaSet, client: httpx.AsyncClient, headers: dict[str, str]
) -> set[str]:
    """The base models' ids (cards without a parent) of the first replica that lists them."""
    for replica in replica_set.replicas:
        if not replica.is_available:
            continue
        try:
            response = await client.get(replica.url + "/v1/models", headers=headers, timeout=5.0)
            response.raise_for_status()
            cards = response.json()["data"]
            return {card["id"] for card in cards if not card.get("parent")}
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as error:
            logger.debug("replica %d: /v1/models: %s", replica.index, error)
    return set()
