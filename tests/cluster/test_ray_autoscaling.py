"""corral on Ray Serve without a Ray cluster: Ray's autoscaling context turned into corral's
policy's arguments, the `corral serve --ray` flags and the deployment options they make (Ray
itself: test_ray_serve)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from corral.cli import build_parser
from corral.cluster.autoscaling import AutoscalingConfig, ReplicaMetrics
from corral.cluster.ray_autoscaling import (
    KV_USAGE_METRIC,
    NUM_RUNNING_METRIC,
    NUM_WAITING_METRIC,
    CorralAutoscalingPolicy,
    replica_metrics,
)
from corral.cluster.ray_cli import ray_config_from_args
from corral.cluster.ray_serve import RayServeConfig, deployment_options, replica_engine_config
from corral.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
from corral.serve.config import ServerConfig


def reported(*replicas: tuple[float, float, float]) -> dict[str, dict[str, float]]:
    """Ray's aggregated custom metrics for replicas r0, r1, ...: (running, waiting, kv)."""
    names = (NUM_RUNNING_METRIC, NUM_WAITING_METRIC, KV_USAGE_METRIC)
    return {
        name: {f"r{index}": values[column] for index, values in enumerate(replicas)}
        for column, name in enumerate(names)
    }


def context(running: int, target: int, ongoing: float, metrics, now_s: float = 100.0):
    """The parts of Ray's AutoscalingContext the policy reads."""
    return SimpleNamespace(
        current_num_replicas=running,
        target_num_replicas=target,
        running_replicas=[f"r{index}" for index in range(running)],
        total_num_requests=ongoing,
        aggregated_metrics=metrics,
        current_time=now_s,
    )


def test_replica_metrics_from_ray_aggregates():
    metrics = reported((2.5, 1.0, 0.5))
    metrics[KV_USAGE_METRIC]["r1"] = math.nan  # r1 reported nothing usable
    assert replica_metrics(metrics, ["r0", "r1"]) == [
        ReplicaMetrics(2.5, 1.0, 0.5),  # type: ignore[arg-type]  # look-back means
        ReplicaMetrics(0, 0, 0.0),
    ]
    assert replica_metrics(None, ["r0"]) == [ReplicaMetrics(0, 0, 0.0)]


def test_the_simulators_policy_decides_on_corral_metrics():
    spec = AutoscalingConfig(
        min_replicas=1, max_replicas=4, target_ongoing_requests=4, upscale_delay_s=5
    ).to_spec()
    policy = CorralAutoscalingPolicy(spec)
    # 2 replicas, 12 requests in the engines: wish 3, held for up_delay_s first.
    busy = reported((5, 1, 0.2), (4, 2, 0.2))
    assert policy(context(2, 2, 12, busy, now_s=100.0)) == (2, {})
    assert policy(context(2, 2, 12, busy, now_s=105.0)) == (3, {})
    # Ray counts 20 (8 held at its proxy, beyond the engines' 12): wish 5, clamped to max 4.
    policy = CorralAutoscalingPolicy(spec.replace("up_delay_s=5", "up_delay_s=0"))
    assert policy(context(2, 2, 20, busy)) == (4, {})
    # A replica starting counts towards the wish: 3 wanted, 2 running + 1 starting.
    assert policy(context(2, 3, 12, busy)) == (3, {})
    # No custom metrics yet (just started): Ray's count alone.
    assert policy(context(2, 2, 12, None)) == (3, {})
    # Few requests, full KV pools: one more replica (the policy's kv threshold, 0.9).
    full = reported((1, 0, 0.95), (1, 0, 0.92))
    assert policy(context(2, 2, 2, full)) == (3, {})
    with pytest.raises(ValueError, match="autoscaling"):
        CorralAutoscalingPolicy("no-such-policy")


def test_scaled_to_zero_wakes_at_once():
    policy = CorralAutoscalingPolicy(AutoscalingConfig(min_replicas=0, max_replicas=2).to_spec())
    assert policy(context(0, 0, 0, None)) == (0, {})
    assert policy(context(0, 0, 3, None)) == (2, {})  # 3 held at the proxy, target 2: no delay


def parse(*flags: str):
    return build_parser("serve").parse_args(["serve", "--ray", *flags])


def test_flags_fixed_or_autoscaled():
    fixed = ray_config_from_args(parse())
    assert (fixed.num_replicas, fixed.autoscaling) == (1, None)
    assert fixed.ray_autoscaling_config() is None
    assert ray_config_from_args(parse("--replicas", "3")).num_replicas == 3
    to_zero = ray_config_from_args(parse("--min-replicas", "0")).autoscaling
    assert (to_zero.min_replicas, to_zero.max_replicas) == (0, 1)
    flags = ray_config_from_args(
        parse("--max-replicas", "4", "--target-ongoing-requests", "8", "--upscale-delay-s", "5")
    )
    spec = "target-ongoing:min=1,max=4,target=8,up_delay_s=5"
    assert flags.autoscaling == ray_config_from_args(parse("--autoscale", spec)).autoscaling
    ray_config = flags.ray_autoscaling_config()
    assert (ray_config["min_replicas"], ray_config["max_replicas"]) == (1, 4)
    # Ray's own delays off: the policy's are the hysteresis.
    assert ray_config["upscale_delay_s"] == ray_config["downscale_delay_s"] == 0
    assert ray_config["policy"]["policy_function"] is CorralAutoscalingPolicy
    assert ray_config["policy"]["policy_kwargs"] == {"spec": flags.autoscaling.to_spec()}
    for bad, message in (
        (("--replicas", "2", "--max-replicas", "3"), "either --replicas"),
        (("--autoscale", spec, "--max-replicas", "3"), "not both"),
        (("--min-replicas", "3", "--max-replicas", "2"), "exceeds max_replicas"),
        (("--autoscale", "target-ongoing:maxx=2"), "unknown autoscaling key"),
        (("--replica-num-cpus", "0"), "--replica-num-cpus"),
        (("--max-retries", "-1"), "--max-retries"),
    ):
        with pytest.raises(ValueError, match=message):
            ray_config_from_args(parse(*bad))


def test_deployment_options_reserve_the_replica_resources(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model").mkdir()
    engine = EngineConfig(
        model=ModelConfig(model="model"), scheduler=SchedulerConfig(max_num_seqs=32)
    )
    config = RayServeConfig(
        autoscaling=AutoscalingConfig(min_replicas=0, max_replicas=3), replica_num_cpus=2
    )
    options = deployment_options(engine, ServerConfig(drain_timeout_s=7), config)
    assert options["ray_actor_options"] == {"num_cpus": 2, "num_gpus": 0.0}
    assert options["max_ongoing_requests"] == 32  # the engine's batch: more wait in Ray
    assert options["graceful_shutdown_timeout_s"] == 7
    assert "num_replicas" not in options and options["autoscaling_config"]["min_replicas"] == 0
    cuda = EngineConfig(model=ModelConfig(device="cuda"))
    fixed = deployment_options(cuda, ServerConfig(), RayServeConfig(num_replicas=2))
    assert fixed["num_replicas"] == 2 and fixed["ray_actor_options"]["num_gpus"] == 1.0
    # Each replica: torch threads = its CPUs, the model directory absolute (any node's cwd).
    replica = replica_engine_config(engine, config).model
    assert replica.num_threads == 2 and replica.model == str(tmp_path / "model")
    assert replica_engine_config(cuda, config).model.model is None  # the bundled model


def test_corral_routes_on_ray_with_the_engines_geometry():
    """Ray's request router for the replicas is corral's, with --policy, its options and the
    replicas' KV block size, pool and hash (so prefix-aware hashes prompts as they do)."""
    args = parse("--policy", "prefix-aware", "--max-imbalance", "3", "--block-size", "32")
    config = ray_config_from_args(args)
    assert (config.policy, config.policy_options) == ("prefix-aware", (("max_imbalance", 3),))
    engine = EngineConfig(cache=CacheConfig(block_size=32, num_blocks=100, prefix_hash="builtin"))
    router = deployment_options(engine, ServerConfig(), config)["request_router_config"]
    assert router["request_router_class"] == "corral.cluster.ray_routing.CorralRequestRouter"
    assert router["request_router_kwargs"] == {
        "policy": "prefix-aware", "block_size": 32, "num_blocks": 100,
        "prefix_hash": "builtin", "options": {"max_imbalance": 3},
    }  # fmt: skip
    assert ray_config_from_args(parse()).policy == "least-outstanding"
    with pytest.raises(ValueError, match="--policy must be one of"):
        RayServeConfig(policy="random")


@pytest.mark.filterwarnings("ignore:The `metrics_interval_s`:DeprecationWarning")
def test_ray_accepts_the_autoscaling_config():
    serve_config = pytest.importorskip("ray.serve.config", reason="Ray Serve is not installed")
    config = RayServeConfig(autoscaling=AutoscalingConfig(min_replicas=0, max_replicas=2))
    options = deployment_options(EngineConfig(), ServerConfig(), config)
    router = serve_config.RequestRouterConfig(**options["request_router_config"])
    assert router.request_routing_stats_period_s == config.metrics_interval_s
    parsed = serve_config.AutoscalingConfig(**config.ray_autoscaling_config())
    assert (parsed.min_replicas, parsed.max_replicas, parsed.metrics_interval_s) == (0, 2, 1.0)
    assert not parsed.policy.is_default_policy_function()


def test_policy_and_flags_load_neither_torch_nor_ray():
    """Ray's controller imports the policy (torch-free, like the simulator's); `corral serve`
    adds the --ray flags without importing Ray."""
    script = (
        "import sys, corral.cluster.ray_autoscaling, corral.cluster.ray_cli\n"
        "print(sorted(name for name in ('torch', 'ray') if name in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr
