"""Measures the cold start of `corral serve --ray` scaled to zero: from a request sent while no
replica runs to its first streamed token (Ray starts a replica actor, the actor spawns the
engine core, the core loads the model, then the request runs), against the same request warm.

    python -m corral.cluster.ray_cold_start --model corral-demo --rounds 3 [engine flags]

Starts a local Ray instance (--num-cpus logical CPUs), deploys corral's autoscaling with min 0,
max 1 and a 1 s down delay, and per round waits for zero replicas, then times a streamed
completion cold and again warm (and when Serve first reports the new replica: the autoscaler's
decision). Prints one line per round and the medians.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import httpx

from corral.cluster.autoscaling import AutoscalingConfig
from corral.cluster.ray_serve import APP_NAME, DEPLOYMENT_NAME, RayServeConfig, build_application
from corral.engine.engine_args import add_engine_arguments, engine_config_from_args
from corral.serve.config import ServerConfig

WAIT_TIMEOUT_S = 600.0


def replica_states(serve) -> dict[str, int]:
    return dict(serve.status().applications[APP_NAME].deployments[DEPLOYMENT_NAME].replica_states)


def first_token_s(url: str, model: str) -> float:
    body = {"model": model, "prompt": "Hello", "max_tokens": 8, "stream": True}
    start = time.monotonic()
    with httpx.stream("POST", url, json=body, timeout=WAIT_TIMEOUT_S) as response:
        response.raise_for_status()
        elapsed = None
        for line in response.iter_lines():  # read to the end: the request finishes
            if elapsed is None and line.startswith("data: ") and '"text"' in line:
                elapsed = time.monotonic() - start
    if elapsed is None:
        raise RuntimeError("the stream ended without a token")
    return elapsed


def watch_replicas(serve, start: float, stop: threading.Event, seen: list[float]) -> None:
    """Appends to seen the seconds from start until Serve reports a replica (the autoscaler's
    decision: polled every 0.1 s)."""
    while not stop.is_set():
        states = replica_states(serve)
        if states.get("STARTING", 0) + states.get("RUNNING", 0):
            seen.append(time.monotonic() - start)
            return
        time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--num-cpus", type=int, default=2, help="logical CPUs of the Ray node")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument(
        "--metrics-interval-s", type=float, default=RayServeConfig().metrics_interval_s
    )
    parser.add_argument("--look-back-period-s", type=float, default=2.0)
    add_engine_arguments(parser)
    args = parser.parse_args(argv)

    import ray
    from ray import serve

    engine_config = engine_config_from_args(args)
    server_config = ServerConfig(served_model_name="model", drain_timeout_s=5.0)
    config = RayServeConfig(
        autoscaling=AutoscalingConfig(min_replicas=0, max_replicas=1, downscale_delay_s=1.0),
        look_back_period_s=args.look_back_period_s,
        metrics_interval_s=args.metrics_interval_s,
    )
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        serve.run(build_application(engine_config, server_config, config), name=APP_NAME)
        url = f"http://127.0.0.1:{args.port}/v1/completions"
        cold, warm, starting = [], [], []
        for round_index in range(args.rounds):
            deadline = time.monotonic() + WAIT_TIMEOUT_S
            while any(replica_states(serve).values()):  # none running, none stopping
                if time.monotonic() > deadline:
                    raise TimeoutError("the deployment did not scale to zero")
                time.sleep(0.5)
            time.sleep(2.0)  # the stopped replica's processes exit
            stop, seen = threading.Event(), list[float]()
            poller = threading.Thread(
                target=watch_replicas, args=(serve, time.monotonic(), stop, seen)
            )
            poller.start()
            cold.append(first_token_s(url, "model"))
            stop.set()
            poller.join()
            starting.append(seen[0] if seen else float("nan"))
            warm.append(first_token_s(url, "model"))
            print(
                f"round {round_index + 1}: first token {cold[-1]:.2f} s cold (replica started "
                f"at {starting[-1]:.2f} s), {warm[-1] * 1000:.0f} ms warm",
                flush=True,
            )
        print(
            f"median of {args.rounds}: first token {statistics.median(cold):.2f} s cold (replica "
            f"started at {statistics.median(starting):.2f} s), "
            f"{statistics.median(warm) * 1000:.0f} ms warm"
        )
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
