"""Router overhead per request (benchmarks/router.py): the same small completion (a short
prompt, max_tokens 1, not streamed), one at a time, sent directly to a replica and through
routers whose only backend is that replica, interleaved request by request (the order rotating)
so that the machine's drift falls on every path alike.

The same requests calibrate the simulator's request path (`corral simulate run
--request-path-ms`): the replica's step log has each request's TTFT as the engine saw it
(frontend arrival to the end of the step of its first token), so per path the client's mean
latency less the engines' mean TTFT is the time spent outside the engine (client, router, HTTP,
tokenization and the answer's way back), measured on an idle replica.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from benchmarks.router_procs import CpuMeter, start_router, stop_all, wait_router_ready

PROMPT = "Tom has 3 apples and buys 4 more. How many apples"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def measure_overhead(
    targets: dict[str, str], num_requests: int, num_warmup: int = 10
) -> dict[str, Any]:
    """targets: name -> base URL, the first one the direct connection. Per target the latency
    (ms) p50 / p99 / mean; per router the difference to direct at p50 and p99, and the median
    of the per-request differences (paired within one rotation)."""
    names = list(targets)
    clients = {name: httpx.Client(base_url=url, timeout=60.0) for name, url in targets.items()}
    body = {"prompt": PROMPT, "max_tokens": 1, "temperature": 0.0, "ignore_eos": True}
    latencies: dict[str, list[float]] = {name: [] for name in names}
    try:
        model = clients[names[0]].get("/v1/models").json()["data"][0]["id"]
        body["model"] = model
        window_start = 0.0
        for index in range(num_warmup + num_requests):
            if index == num_warmup:
                window_start = time.monotonic()
            shift = index % len(names)
            for name in names[shift:] + names[:shift]:
                start = time.perf_counter()
                response = clients[name].post("/v1/completions", json=body)
                elapsed = time.perf_counter() - start
                response.raise_for_status()
                if index >= num_warmup:
                    latencies[name].append(1e3 * elapsed)
        window = (window_start, time.monotonic())
    finally:
        for client in clients.values():
            client.close()
    direct_name = names[0]
    direct = latencies[direct_name]
    rows = []
    for name in names:
        values = latencies[name]
        row = {
            "path": name,
            "num_requests": len(values),
            "p50_ms": statistics.median(values),
            "p99_ms": _percentile(values, 0.99),
            "mean_ms": statistics.fmean(values),
        }
        if name != direct_name:
            row["overhead_p50_ms"] = row["p50_ms"] - statistics.median(direct)
            row["overhead_p99_ms"] = row["p99_ms"] - _percentile(direct, 0.99)
            row["paired_median_diff_ms"] = statistics.median(
                [a - b for a, b in zip(values, direct)]
            )
        rows.append(row)
    return {"prompt": PROMPT, "max_tokens": 1, "rows": rows, "window": list(window)}


def engine_ttft_mean_s(step_log: Path, window: tuple[float, float]) -> float | None:
    """Mean TTFT the engine saw for the requests that arrived inside window."""
    from corral.engine.step_log import read_step_log

    _, _, requests = read_step_log(step_log)
    start, end = window
    ttfts = [
        r["first"] - r["arrival"]
        for r in requests
        if start <= r["arrival"] <= end and r.get("first") is not None
    ]
    return statistics.fmean(ttfts) if ttfts else None


def router_overhead(
    stack: ExitStack,
    url: str,
    model_dir: str,
    args: argparse.Namespace,
    work: Path,
    step_log: Path,
) -> dict[str, Any]:
    """Direct to the replica at url against round-robin and prefix-aware routers over it; and
    request_path_s per routing policy (prefix-aware: through the prefix-aware router, which
    tokenizes; the load-only policies: through the round-robin one)."""
    routers = {}
    stack.callback(lambda: stop_all(list(routers.values())))  # those started, at the end
    for policy in ("round-robin", "prefix-aware"):
        log = work / f"router-overhead-{policy}.log"
        router = start_router([url], policy, model_dir, args.num_kv_blocks, log)
        routers[policy] = router
    for router in routers.values():
        wait_router_ready(router, 1)
    load_before = os.getloadavg()[0]
    meter = CpuMeter()
    paths = {f"router {p} (1 backend)": p for p in routers}
    overhead = measure_overhead(
        {"direct (replica 0)": url} | {name: routers[p].url for name, p in paths.items()},
        args.overhead_requests,
    )
    overhead["load_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    overhead["cpu"] = meter.stop()
    time.sleep(1.0)  # the step log is written by the replica's engine process
    engine_s = engine_ttft_mean_s(step_log, tuple(overhead["window"]))
    if engine_s is None:
        return overhead
    overhead["engine_ttft_mean_ms"] = 1e3 * engine_s
    for row in overhead["rows"]:
        row["request_path_ms"] = row["mean_ms"] - 1e3 * engine_s
    by_path = {row["path"]: max(0.0, row["request_path_ms"] / 1e3) for row in overhead["rows"]}
    round_robin = by_path["router round-robin (1 backend)"]
    overhead["request_path_s"] = {
        "round-robin": round_robin,
        "least-outstanding": round_robin,
        "prefix-aware": by_path["router prefix-aware (1 backend)"],
    }
    return overhead
