"""Router overhead per request (benchmarks/router.py): the same small completion (a short
prompt, max_tokens 1, not streamed), one at a time, sent directly to a replica and through
routers whose only backend is that replica, interleaved request by request (the order rotating)
so that the machine's drift falls on every path alike."""

from __future__ import annotations

import statistics
import time
from typing import Any

import httpx

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
        for index in range(num_warmup + num_requests):
            shift = index % len(names)
            for name in names[shift:] + names[:shift]:
                start = time.perf_counter()
                response = clients[name].post("/v1/completions", json=body)
                elapsed = time.perf_counter() - start
                response.raise_for_status()
                if index >= num_warmup:
                    latencies[name].append(1e3 * elapsed)
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
    return {"prompt": PROMPT, "max_tokens": 1, "rows": rows}
