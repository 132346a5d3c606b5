"""`corral serve --ray`: the flags and the command (docs/ray.md); the application itself is
corral.cluster.ray_serve. Imports ray only when the command runs."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
import warnings
from types import FrameType
from typing import Any

from corral.cluster.autoscaling import AutoscalingConfig
from corral.cluster.ray_serve import (
    APP_NAME,
    METRICS_INTERVAL_WARNING,
    PATIENT_PROXY_ENV,
    RayServeConfig,
    build_application,
)

logger = logging.getLogger(__name__)


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    """`corral serve`'s --ray and the flags that go with it."""
    defaults = RayServeConfig()
    group = parser.add_argument_group("Ray (corral serve --ray: replicas as a Ray Serve app)")
    group.add_argument(
        "--ray",
        action="store_true",
        help="serve on Ray Serve: replicas are Ray actors placed across the Ray cluster, "
        "behind Ray Serve's HTTP proxy on --host/--port (docs/ray.md)",
    )
    group.add_argument(
        "--ray-address",
        default=None,
        help="the Ray cluster: auto (the one this machine belongs to), ray://HOST:10001 "
        "(Ray Client); default: start a local Ray instance",
    )
    group.add_argument(
        "--autoscale",
        default=None,
        metavar="SPEC",
        help="autoscale by corral's policy, the spec `corral simulate run --autoscale` takes, "
        "e.g. target-ongoing:min=0,max=4,target=8,kv=0.9,up_delay_s=5,down_delay_s=30 (or the "
        "flags below)",
    )
    spec = AutoscalingConfig()
    autoscaling = (
        ("--min-replicas", int, f"autoscale from this many replicas, 0: scale to zero when idle "
         f"(default {spec.min_replicas})"),
        ("--max-replicas", int, "autoscale up to this many (default max(1, --min-replicas))"),
        ("--target-ongoing-requests", float, "running + waiting requests per replica aimed at "
         f"(default {spec.target_ongoing_requests:g})"),
        ("--kv-usage-threshold", float, "one more replica while the replicas' mean KV usage "
         f"exceeds this (default {spec.kv_usage_threshold:g})"),
        ("--upscale-delay-s", float, "a wish to scale up must hold this long (default "
         f"{spec.upscale_delay_s:g})"),
        ("--downscale-delay-s", float, "a wish to scale down must hold this long (default "
         f"{spec.downscale_delay_s:g})"),
    )  # fmt: skip
    for flag, kind, help_text in autoscaling:
        group.add_argument(flag, type=kind, default=None, help=help_text)
    group.add_argument(
        "--look-back-period-s",
        type=float,
        default=None,
        help="Ray averages the replicas' load over this window (Ray's default: 30)",
    )
    group.add_argument(
        "--autoscaling-metrics-interval-s",
        type=float,
        default=defaults.metrics_interval_s,
        help="replicas and proxies push their load to Ray's autoscaler this often (Ray's "
        "default: 10; it also delays the scale-up from zero)",
    )
    group.add_argument(
        "--replica-num-cpus",
        type=float,
        default=defaults.replica_num_cpus,
        help="CPUs Ray reserves for each replica; also its torch threads unless --num-threads",
    )
    group.add_argument(
        "--replica-num-gpus",
        type=float,
        default=None,
        help="GPUs Ray reserves for each replica (default: 1 with --device cuda, else 0)",
    )
    group.add_argument(
        "--max-ongoing-requests",
        type=int,
        default=None,
        help="requests Ray sends one replica at once; more wait in Ray's proxy (default: "
        "--max-num-seqs)",
    )


# --flag -> AutoscalingConfig field
_AUTOSCALING_FLAGS = {
    "min_replicas": "min_replicas",
    "max_replicas": "max_replicas",
    "target_ongoing_requests": "target_ongoing_requests",
    "kv_usage_threshold": "kv_usage_threshold",
    "upscale_delay_s": "upscale_delay_s",
    "downscale_delay_s": "downscale_delay_s",
}


def autoscaling_config_from_args(args: argparse.Namespace) -> AutoscalingConfig | None:
    """--autoscale SPEC, or the separate flags (not both); None without either."""
    given = {
        field: getattr(args, dest)
        for dest, field in _AUTOSCALING_FLAGS.items()
        if getattr(args, dest) is not None
    }
    if args.autoscale is not None:
        if given:
            raise ValueError("give --autoscale SPEC or the separate autoscaling flags, not both")
        return AutoscalingConfig.parse(args.autoscale)
    if not given:
        return None
    given.setdefault("max_replicas", max(1, given.get("min_replicas", 1)))
    return AutoscalingConfig(**given)


def ray_config_from_args(args: argparse.Namespace) -> RayServeConfig:
    num_replicas = getattr(args, "replicas", 1)  # the launcher's flag: a fixed count here
    if getattr(args, "prefill_replicas", 0):
        raise ValueError("--prefill-replicas (disaggregation) is not supported with --ray yet")
    autoscaling = autoscaling_config_from_args(args)
    if autoscaling is not None and num_replicas != 1:
        raise ValueError("give either --replicas (a fixed count) or autoscaling, not both")
    return RayServeConfig(
        address=args.ray_address,
        num_replicas=num_replicas,
        autoscaling=autoscaling,
        look_back_period_s=args.look_back_period_s,
        metrics_interval_s=args.autoscaling_metrics_interval_s,
        replica_num_cpus=args.replica_num_cpus,
        replica_num_gpus=args.replica_num_gpus,
        max_ongoing_requests=args.max_ongoing_requests,
        policy=args.policy,
        policy_options=policy_options_from_args(args),
        max_retries=args.max_retries,
    )


def policy_options_from_args(args: argparse.Namespace) -> tuple[tuple[str, Any], ...]:
    """The routing policy's own options given on the command line (--max-imbalance)."""
    if getattr(args, "max_imbalance", None) is None:
        return ()
    return (("max_imbalance", args.max_imbalance),)


def run_ray(args: argparse.Namespace) -> int:
    """Deploy on Ray Serve and block until SIGTERM / Ctrl-C; then delete the application (and
    shut Serve and Ray down when this command started them)."""
    from corral.engine.engine_args import engine_config_from_args
    from corral.serve.cli import server_config_from_args

    try:
        config = ray_config_from_args(args)
        server_config = server_config_from_args(args)
        engine_config = engine_config_from_args(args)
    except ValueError as error:
        print(f"corral serve --ray: {error}", file=sys.stderr)
        return 2
    import ray
    from ray import serve

    warnings.filterwarnings("ignore", METRICS_INTERVAL_WARNING, DeprecationWarning)
    started_ray = config.address is None
    if started_ray:
        for name, value in PATIENT_PROXY_ENV.items():
            os.environ.setdefault(name, value)
    ray.init(address=config.address)
    # After ray.init, which installs its own SIGTERM handler: SIGTERM and Ctrl-C (SIGINT, even
    # when inherited ignored) stop at any point below, with the clean-up in the finally.
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        serve.start(http_options={"host": server_config.host, "port": server_config.port})
        serve.run(
            build_application(engine_config, server_config, config),
            name=APP_NAME,
            route_prefix="/",
        )
        print(
            f"corral serve --ray: serving on http://{server_config.host}:{server_config.port} "
            "(`serve status` shows the replicas); Ctrl-C stops",
            flush=True,
        )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        logger.info("stopping: the replicas drain (up to --drain-timeout-s), then exit")
    finally:
        try:
            if started_ray:
                serve.shutdown()
            else:  # a shared cluster: remove this application only
                serve.delete(APP_NAME)
        finally:
            ray.shutdown()  # stops the local Ray instance, or disconnects from the cluster
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return 0


def _interrupt(sig: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(sig).name)
