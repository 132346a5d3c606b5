"""CorralReplica: one corral engine in a Ray Serve replica (a Ray actor), serving corral's own
FastAPI app, so every replica answers the same OpenAI routes and error shapes as `corral serve`.

The actor builds an AsyncLLM whose engine core runs in a child process (as under `corral
serve`: the step loop never blocks the actor's event loop, where Ray's proxy traffic, health
checks and metric pushes run). The constructor runs the app's lifespan start (which starts the
engine and waits for the model), so the replica counts as running once it can serve; __del__,
which Ray Serve calls when the replica stops, runs its shutdown (which stops the engine core);
an orphaned core exits by itself.

Requests come from corral's ingress (corral.cluster.ray_ingress) as Ray calls of handle_http,
which runs each through the app in-process and streams the answer back (corral.cluster.asgi_call),
naming this replica in the x-corral-replica header.

Ray-facing hooks: check_health (a dead engine gets the replica replaced),
record_autoscaling_stats (the engine's queue and KV usage, read by
corral.cluster.ray_autoscaling.CorralAutoscalingPolicy, which feeds them to
corral.cluster.autoscaling's policy) and record_routing_stats (KV usage and the pool's geometry,
read by corral.cluster.ray_routing.CorralRequestRouter).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from ray import serve

from corral.cluster.asgi_call import call_asgi
from corral.cluster.ray_autoscaling import (
    KV_USAGE_METRIC,
    NUM_RUNNING_METRIC,
    NUM_WAITING_METRIC,
)
from corral.cluster.ray_messages import REPLICA_HEADER, ForwardedRequest, ResponseStart
from corral.cluster.ray_routing import BLOCK_SIZE_STAT, KV_USAGE_STAT, NUM_BLOCKS_STAT
from corral.config import EngineConfig
from corral.serve.config import ServerConfig

logger = logging.getLogger(__name__)


class CorralReplica:
    """A Ray Serve deployment class: CorralReplica.bind(engine_config, server_config) after
    serve.deployment(...) options (see corral.cluster.ray_serve.build_application)."""

    # Ray Serve awaits an async constructor (mypy: __init__ must return None).
    async def __init__(  # type: ignore[misc]
        self, engine_config: EngineConfig, server_config: ServerConfig
    ) -> None:
        from corral.engine.async_llm import AsyncLLM
        from corral.serve.app import build_app

        self.engine = AsyncLLM(
            engine_config,
            multiprocess=True,
            heartbeat_timeout_s=server_config.heartbeat_timeout_s,
            step_timeout_s=server_config.step_timeout_s,
            max_queued_requests=server_config.max_queued_requests,
            max_queued_tokens=server_config.max_queued_tokens,
        )
        self._corral_app = build_app(self.engine, server_config, start_engine=True)
        self._replica_name = serve.get_replica_context().replica_id.unique_id
        # The app's lifespan starts the engine (the replica runs once the model is loaded) and,
        # in __del__, drains and stops it. (Not a Serve ingress: corral's ingress is the one.)
        self._lifespan = self._corral_app.router.lifespan_context(self._corral_app)
        await self._lifespan.__aenter__()

    async def __del__(self) -> None:
        """Ray Serve calls this when the replica stops, after its requests drained."""
        await self._lifespan.__aexit__(None, None, None)

    async def handle_http(self, request: ForwardedRequest) -> AsyncIterator[ResponseStart | bytes]:
        """A request from corral's ingress through this replica's app: a ResponseStart (with
        the x-corral-replica header), then the body chunks as the app writes them."""
        async for item in call_asgi(self._corral_app, request):
            if isinstance(item, ResponseStart):
                named = (*item.headers, (REPLICA_HEADER, self._replica_name))
                item = ResponseStart(item.status, named)
            yield item

    async def check_health(self) -> None:
        """Ray Serve calls this every health_check_period_s; raising marks the replica
        unhealthy, and Ray replaces it."""
        if not self.engine.is_healthy:
            raise RuntimeError(f"the corral engine is not running: {self.engine.dead_reason}")

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """The engine's running and waiting requests (per sample) and KV pool usage, for the
        autoscaling policy. An idle engine reports zeros (its last stats may be old)."""
        stats = self.engine.last_stats
        if stats is None or self.engine.num_unfinished_requests == 0:
            return {NUM_RUNNING_METRIC: 0.0, NUM_WAITING_METRIC: 0.0, KV_USAGE_METRIC: 0.0}
        return {
            NUM_RUNNING_METRIC: float(stats.num_running),
            NUM_WAITING_METRIC: float(stats.num_waiting),
            KV_USAGE_METRIC: float(stats.kv_cache_usage),
        }

    async def record_routing_stats(self) -> dict[str, float]:
        """KV usage and the KV pool's geometry, for corral's request router."""
        stats: dict[str, float] = {}
        if self.engine.input_processor.kv_pool is not None:
            num_blocks, block_size = self.engine.input_processor.kv_pool
            stats.update({NUM_BLOCKS_STAT: float(num_blocks), BLOCK_SIZE_STAT: float(block_size)})
        last = self.engine.last_stats
        busy = last is not None and self.engine.num_unfinished_requests > 0
        stats[KV_USAGE_STAT] = float(last.kv_cache_usage) if busy and last is not None else 0.0
        return stats
