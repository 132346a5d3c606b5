"""`corral router`'s application: an OpenAI-compatible front over N corral serve replicas.

POST /v1/completions and /v1/chat/completions go to the replica the routing policy chooses
(corral/cluster/routing.py, the simulator's code) with failover (corral/cluster/proxy.py);
GET /v1/models and /version, POST /tokenize and /detokenize go to the least loaded healthy
replica. GET /health is 200 while at least one replica is in the rotation; GET /metrics is the
router's own (corral/cluster/router_metrics.py). Errors have corral serve's shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response

import corral
from corral.cluster.health import HealthPoller, ReplicaSet
from corral.cluster.prefix_index import PrefixIndex, ReportedPrefixIndex
from corral.cluster.proxy import Forwarder, request_headers
from corral.cluster.replicas import DEFAULT_BLOCK_SIZE, DEFAULT_NUM_BLOCKS, make_replicas
from corral.cluster.router_metrics import RouterMetrics
from corral.cluster.router_prompts import PromptReader
from corral.cluster.routing import ROUTER_POLICIES, make_router
from corral.engine.tokenizer import Tokenizer
from corral.serve.config import ServerConfig
from corral.serve.errors import APIError, install_error_handlers
from corral.serve.metrics import CONTENT_TYPE
from corral.serve.streaming import run_until_disconnected

logger = logging.getLogger(__name__)

ROUTED = ("/v1/completions", "/v1/chat/completions")


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """`corral router`'s settings (the flags of corral/cluster/router_cli.py)."""

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
    seed: int = 0
    max_request_body_bytes: int = ServerConfig().max_request_body_bytes

    def __post_init__(self) -> None:
        if not self.backend_urls:
            raise ValueError("the router needs at least one --backend URL")
        for url in self.backend_urls:
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


def build_router_app(
    config: RouterConfig,
    tokenizer: Tokenizer | None = None,
    prefix_index: PrefixIndex | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    """The router over config.backend_urls. tokenizer: for policies that read prompts.
    prefix_index: the prefix-aware policy's index (default: its own EstimatedPrefixIndex).
    transport: how to reach the replicas (default: HTTP; tests pass a mock)."""
    metrics = RouterMetrics()
    feeds = None
    if config.kv_events:
        from corral.cluster.kv_view import ExternalHashIndex, KVEventFeeds  # needs pyzmq

        if len(config.kv_events) != len(config.backend_urls):
            raise ValueError(
                f"--kv-events was given {len(config.kv_events)} times for "
                f"{len(config.backend_urls)} backends: give one per backend, in order"
            )
        if prefix_index is None:
            prefix_index = ExternalHashIndex(config.kv_events_hash_format)
        assert isinstance(prefix_index, ReportedPrefixIndex)
        feeds = KVEventFeeds(config.kv_events, prefix_index, config.kv_events_topic)
    replicas = make_replicas(
        config.backend_urls,
        unhealthy_after=config.unhealthy_after,
        healthy_after=config.healthy_after,
        block_size=config.block_size,
        num_blocks=config.num_blocks,
    )
    metrics.track(replicas)
    options = {} if config.max_imbalance is None else {"max_imbalance": config.max_imbalance}
    policy = make_router(
        config.policy,
        replicas,
        seed=config.seed,
        prefix_index=prefix_index,
        prefix_hash=config.prefix_hash,
        **options,
    )
    replica_set = ReplicaSet(replicas, policy, metrics, prefix_index)
    prompts = PromptReader(tokenizer)
    own_headers = (
        {"Authorization": f"Bearer {config.backend_api_key}"} if config.backend_api_key else {}
    )
    client = httpx.AsyncClient(
        timeout=httpx.Timeout(connect=config.connect_timeout_s, read=None, write=60.0, pool=None),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
        transport=transport,
    )
    poller = HealthPoller(
        replica_set,
        client,
        poll_interval_s=config.poll_interval_s,
        health_timeout_s=config.health_timeout_s,
        headers=own_headers,
    )
    forwarder = Forwarder(replica_set, client, max_retries=config.max_retries)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await poller.check_all()
        prompts.base_model_names = await _served_model_names(replica_set, client, own_headers)
        if feeds is not None:  # each replica's snapshot, then its stored / removed events
            feeds.start(asyncio.get_running_loop())
        poller.start()
        logger.info(
            "routing over %d replica(s) (%d healthy), policy %s",
            len(replicas),
            replica_set.num_available,
            config.policy,
        )
        try:
            yield
        finally:
            await poller.stop()
            await client.aclose()
            if feeds is not None:
                feeds.stop()

    app = FastAPI(title="corral router", version=corral.__version__, lifespan=lifespan)
    app.state.replica_set = replica_set
    app.state.metrics = metrics
    app.state.poller = poller
    app.state.prefix_index = prefix_index  # the reported one with --kv-events, else None
    install_error_handlers(app)

    async def routed(request: Request) -> Response:
        route = request.url.path
        body = await _read_body(request, config.max_request_body_bytes)
        routing = await prompts.read(route, _json_or_none(body) if tokenizer else None)
        work = forwarder.forward("POST", route, request_headers(request.headers), body, routing)
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
