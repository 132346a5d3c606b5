"""CorralReplica: one corral engine in a Ray Serve replica (a Ray actor), serving corral's own
FastAPI app, so every replica answers the same OpenAI routes and error shapes as `corral serve`.

The actor builds an AsyncLLM whose engine core runs in a child process (as under `corral
serve`: the step loop never blocks the actor's event loop, where Ray's proxy traffic, health
checks and metric pushes run). Ray Serve starts the app's lifespan (which starts the engine and
waits for the model) before the replica counts as running, and runs its shutdown (which stops
the engine core) when the replica stops; an orphaned core exits by itself.

Ray-facing hooks: check_health (a dead engine gets the replica replaced) and
record_autoscaling_stats (the engine's queue and KV usage, read by
corral.cluster.ray_autoscaling.CorralAutoscalingPolicy, which feeds them to
corral.cluster.autoscaling's policy).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI
from ray import serve

from corral.cluster.ray_autoscaling import (
    KV_USAGE_METRIC,
    NUM_RUNNING_METRIC,
    NUM_WAITING_METRIC,
)
from corral.config import EngineConfig
from corral.serve.config import ServerConfig

logger = logging.getLogger(__name__)


@serve.ingress()
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
        # The lifespan (run by Ray Serve after this constructor) starts and stops the engine.
        self._corral_app = build_app(self.engine, server_config, start_engine=True)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return self._corral_app

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
