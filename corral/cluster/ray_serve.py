"""`corral serve --ray`: corral replicas as a Ray Serve application (docs/ray.md).

Each replica is a Ray actor holding one engine (corral.cluster.ray_replica.CorralReplica) that
serves corral's OpenAI app; Ray places the replicas on the machines of the Ray cluster (each
reserves --replica-num-cpus CPUs, and a GPU when the engine runs on CUDA). Ray Serve's HTTP
proxy hands requests to corral's ingress (corral.cluster.ray_ingress.CorralIngress), which
calls the replicas through a handle whose request router runs corral's routing policy
(--policy; corral.cluster.ray_routing). With autoscaling, Ray Serve's controller scales the
replicas by corral's autoscaling policy (corral/cluster/autoscaling.py, the simulator's) on
corral's queue and KV metrics (corral.cluster.ray_autoscaling); min 0 scales to zero when idle,
and the next request waits for a replica to start (the cold start).

The command line is corral.cluster.ray_cli. This module imports ray only when it builds the
application, so `corral serve` works without it.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.cluster.autoscaling import AutoscalingConfig
from corral.cluster.ray_autoscaling import CorralAutoscalingPolicy
from corral.cluster.replicas import DEFAULT_NUM_BLOCKS
from corral.config import EngineConfig
from corral.serve.config import ServerConfig

APP_NAME = "corral"
DEPLOYMENT_NAME = "CorralReplica"
INGRESS_NAME = "CorralIngress"
ROUTER_CLASS = "corral.cluster.ray_routing.CorralRequestRouter"
# Requests one ingress replica holds at once (it only relays; Ray's proxies queue the rest).
INGRESS_MAX_ONGOING_REQUESTS = 4096
DEFAULT_METRICS_INTERVAL_S = 1.0
# Ray deprecates AutoscalingConfig.metrics_interval_s for environment variables, yet (2.60) reads
# only the field for the pushes that matter here.
METRICS_INTERVAL_WARNING = "The `metrics_interval_s` field"
# Serve gives its HTTP proxy 5 s to report ready and 10 s per health check, three strikes, then
# kills it; on a busy 2-core machine (a compiler beside it) the proxy missed both and
# `serve.start` failed. Where the user has not set them, a local instance started by corral
# waits longer (environment variables its workers inherit; set before ray.init).
PATIENT_PROXY_ENV = {
    "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60",
    "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "60",
}


@dataclass(frozen=True, slots=True)
class RayServeConfig:
    """How the replicas run on Ray: num_replicas of them, or, with `autoscaling`, as many as
    corral's autoscaling policy decides (corral.cluster.ray_autoscaling)."""

    address: str | None = None  # None: start a local Ray instance; "auto", "ray://host:10001"
    num_replicas: int = 1  # without autoscaling
    autoscaling: AutoscalingConfig | None = None
    # Ray averages the replicas' metrics over this window (None: Ray's default, 30 s).
    look_back_period_s: float | None = None
    # How often replicas and Ray's proxies push load to the autoscaler. Ray's default, 10 s,
    # also delays a scale-up from zero: a cold first token took 12.7 s there against 5.9 s at
    # 1 s (corral-demo, docs/ray.md).
    metrics_interval_s: float = DEFAULT_METRICS_INTERVAL_S
    replica_num_cpus: float = 1.0
    replica_num_gpus: float | None = None  # None: 1 when the engine's device is CUDA, else 0
    max_ongoing_requests: int | None = None  # None: the engine's max_num_seqs
    # corral's routing policy over the replicas (a corral.cluster.routing name) and its options.
    policy: str = "least-outstanding"
    policy_options: tuple[tuple[str, Any], ...] = ()
    max_retries: int = 2  # moves of a request whose replica died before answering
    num_ingress_replicas: int = 1

    def __post_init__(self) -> None:
        from corral.cluster.routing import ROUTER_POLICIES

        if self.policy not in ROUTER_POLICIES.names():
            known = sorted(ROUTER_POLICIES.names())
            raise ValueError(f"--policy must be one of {known}, got {self.policy!r}")
        if self.max_retries < 0:
            raise ValueError(f"--max-retries must be >= 0, got {self.max_retries}")
        if self.num_ingress_replicas < 1:
            raise ValueError(f"ingress replicas must be >= 1, got {self.num_ingress_replicas}")
        if self.num_replicas < 1:
            raise ValueError(f"--replicas must be >= 1, got {self.num_replicas}")
        if self.replica_num_cpus <= 0:
            raise ValueError(f"--replica-num-cpus must be > 0, got {self.replica_num_cpus}")
        if self.metrics_interval_s <= 0:
            raise ValueError(
                f"--autoscaling-metrics-interval-s must be > 0, got {self.metrics_interval_s}"
            )
        if self.look_back_period_s is not None and self.look_back_period_s <= 0:
            raise ValueError(f"--look-back-period-s must be > 0, got {self.look_back_period_s}")
        if self.max_ongoing_requests is not None and self.max_ongoing_requests < 1:
            raise ValueError(
                f"--max-ongoing-requests must be >= 1, got {self.max_ongoing_requests}"
            )

    def ray_autoscaling_config(self) -> dict[str, Any] | None:
        """Ray Serve's autoscaling_config: corral's policy, its bounds, no delays of Ray's own
        (the policy's are the hysteresis); None without autoscaling."""
        autoscaling = self.autoscaling
        if autoscaling is None:
            return None
        config: dict[str, Any] = {
            "min_replicas": autoscaling.min_replicas,
            "max_replicas": autoscaling.max_replicas,
            "initial_replicas": autoscaling.initial_count(autoscaling.min_replicas),
            # Read by Ray's default policy only; kept equal for `serve status` and dashboards.
            "target_ongoing_requests": autoscaling.target_ongoing_requests,
            "upscale_delay_s": 0.0,
            "downscale_delay_s": 0.0,
            "downscale_to_zero_delay_s": 0.0,
            "metrics_interval_s": self.metrics_interval_s,
            "policy": {
                "policy_function": CorralAutoscalingPolicy,
                "policy_kwargs": {"spec": autoscaling.to_spec()},
            },
        }
        if self.look_back_period_s is not None:
            config["look_back_period_s"] = self.look_back_period_s
        return config


def replica_engine_config(engine_config: EngineConfig, config: RayServeConfig) -> EngineConfig:
    """engine_config as a replica runs it: torch threads = its reserved CPUs (unless
    --num-threads says otherwise), a local model directory made absolute (every node must have
    the model at that path: shared storage or the same image)."""
    model = engine_config.model
    changes: dict[str, Any] = {}
    if not model.num_threads:
        changes["num_threads"] = max(1, int(config.replica_num_cpus))
    for name in ("model", "tokenizer"):
        path = getattr(model, name)
        if path is not None and Path(path).exists():
            changes[name] = str(Path(path).resolve())
    return dataclasses.replace(engine_config, model=dataclasses.replace(model, **changes))


def deployment_options(
    engine_config: EngineConfig, server_config: ServerConfig, config: RayServeConfig
) -> dict[str, Any]:
    """Options of serve.deployment for the replicas."""
    num_gpus = config.replica_num_gpus
    if num_gpus is None:
        num_gpus = 1.0 if engine_config.model.device.startswith("cuda") else 0.0
    options: dict[str, Any] = {
        "name": DEPLOYMENT_NAME,
        "ray_actor_options": {"num_cpus": config.replica_num_cpus, "num_gpus": num_gpus},
        "max_ongoing_requests": config.max_ongoing_requests or engine_config.scheduler.max_num_seqs,
        # Ray stops routing to a stopping replica, then waits this long for its requests.
        "graceful_shutdown_timeout_s": server_config.drain_timeout_s,
        # Loading a model can take minutes on a busy machine.
        "health_check_timeout_s": max(30.0, server_config.heartbeat_timeout_s),
    }
    cache = engine_config.cache
    options["request_router_config"] = {
        "request_router_class": ROUTER_CLASS,
        "request_router_kwargs": {
            "policy": config.policy,
            "block_size": cache.block_size,
            "num_blocks": cache.num_blocks or DEFAULT_NUM_BLOCKS,
            "prefix_hash": cache.prefix_hash,
            "options": dict(config.policy_options),
        },
        "request_routing_stats_period_s": config.metrics_interval_s,
    }
    autoscaling = config.ray_autoscaling_config()
    if autoscaling is not None:
        options["autoscaling_config"] = autoscaling
    else:
        options["num_replicas"] = config.num_replicas
    return options


def served_model_names(model_dir: Path, server_config: ServerConfig) -> tuple[str, ...]:
    """The base model's name as the replicas serve it (any other `model` is an adapter)."""
    return (server_config.served_model_name or model_dir.name,)


def ingress_options(config: RayServeConfig) -> dict[str, Any]:
    """Options of serve.deployment for corral's ingress: no CPU reserved (it relays and, for
    prefix-aware, tokenizes), many requests at once."""
    return {
        "name": INGRESS_NAME,
        "num_replicas": config.num_ingress_replicas,
        "ray_actor_options": {"num_cpus": 0},
        "max_ongoing_requests": INGRESS_MAX_ONGOING_REQUESTS,
    }


def build_application(
    engine_config: EngineConfig, server_config: ServerConfig, config: RayServeConfig
) -> Any:
    """The Ray Serve application (serve.run it): corral's ingress in front of the corral
    replicas, bound to their configs."""
    from ray import serve

    from corral.cluster.ray_ingress import CorralIngress
    from corral.cluster.ray_replica import CorralReplica
    from corral.model.resolve import resolve_model_dir

    options = deployment_options(engine_config, server_config, config)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", METRICS_INTERVAL_WARNING, DeprecationWarning)
        deployment: Any = serve.deployment(CorralReplica, **options)
    replica_config = replica_engine_config(engine_config, config)
    replicas = deployment.bind(replica_config, server_config)
    model_dir = resolve_model_dir(replica_config.model.model)
    ingress: Any = serve.deployment(CorralIngress, **ingress_options(config))
    return ingress.bind(
        replicas,
        config.policy,
        replica_config.model.tokenizer or str(model_dir),
        served_model_names(model_dir, server_config),
        config.max_retries,
    )
