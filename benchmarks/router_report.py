"""The tables and targets of the router benchmark (benchmarks/router.py): per (workload,
policy) the mean over rounds of the measured and simulated figures."""

from __future__ import annotations

import statistics
from typing import Any

TARGET_SPEEDUP = 1.5  # prefix-aware vs round robin, mean TTFT, multi-turn
TARGET_SIM_ERROR = 0.15  # |simulated / measured - 1|, mean TTFT


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def aggregate(runs: list[dict], policies: list[str], workloads: list[str]) -> list[dict]:
    """One row per (workload, policy): the mean over rounds of each run's figures."""
    rows = []
    for kind in workloads:
        for policy in policies:
            mine = [r for r in runs if r["workload"] == kind and r["policy"] == policy]
            if not mine:
                continue
            row: dict[str, Any] = {"workload": kind, "policy": policy, "num_runs": len(mine)}
            for key in ("ttft_mean_ms", "ttft_p50_ms", "ttft_p99_ms", "tpot_mean_ms"):
                row[key] = _mean([r[key] for r in mine])
            row["engine_ttft_mean_ms"] = _mean([r.get("engine_ttft_mean_ms") for r in mine])
            row["replica_busy"] = _mean([_mean(r.get("replica_busy", [])) for r in mine])
            queried = sum(r["prompt_tokens_queried"] for r in mine)
            hit_tokens = sum(
                (r["prefix_hit_rate"] or 0) * r["prompt_tokens_queried"] for r in mine
            )  # fmt: skip
            row["prefix_hit_rate"] = hit_tokens / queried if queried else None
            row["ttft_mean_ms_range"] = [min(r["ttft_mean_ms"] for r in mine),
                                         max(r["ttft_mean_ms"] for r in mine)]  # fmt: skip
            row["num_failed"] = sum(r["num_failed"] for r in mine)
            row["num_contended"] = sum(r["contended"] for r in mine)
            for which in ("sim", "sim_own_steps", "sim_no_path"):
                sims = [r[which] for r in mine if r.get(which)]
                if sims:
                    row[f"{which}_ttft_mean_ms"] = _mean([s["ttft_mean_ms"] for s in sims])
                    row[f"{which}_prefix_hit_rate"] = _mean([s["prefix_hit_rate"] for s in sims])
                    row[f"{which}_error"] = row[f"{which}_ttft_mean_ms"] / row["ttft_mean_ms"] - 1
            rows.append(row)
    return rows


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_tables(rows: list[dict], overhead: dict | None) -> None:
    print(
        f"\n{'workload':<14}{'policy':<19}{'TTFT mean':>10}{'p50':>8}{'p99':>8}{'hit rate':>9}"
        f"{'busy':>6}{'sim TTFT':>10}{'error':>8}{'sim hit':>8}{'own-steps err':>14}"
        f"{'no-path err':>12}"
    )
    for r in rows:
        print(
            f"{r['workload']:<14}{r['policy']:<19}{fmt(r['ttft_mean_ms'], '.1f'):>10}"
            f"{fmt(r['ttft_p50_ms'], '.1f'):>8}{fmt(r['ttft_p99_ms'], '.1f'):>8}"
            f"{fmt(r['prefix_hit_rate'], '.1%'):>9}{fmt(r.get('replica_busy'), '.0%'):>6}"
            f"{fmt(r.get('sim_ttft_mean_ms'), '.1f'):>10}"
            f"{fmt(r.get('sim_error'), '+.1%'):>8}{fmt(r.get('sim_prefix_hit_rate'), '.1%'):>8}"
            f"{fmt(r.get('sim_own_steps_error'), '+.1%'):>14}"
            f"{fmt(r.get('sim_no_path_error'), '+.1%'):>12}"
        )
    if overhead:
        print(f"\n{'path':<34}{'p50 ms':>8}{'p99 ms':>8}{'+p50':>8}{'+p99':>8}{'paired':>8}")
        for r in overhead["rows"]:
            print(
                f"{r['path']:<34}{r['p50_ms']:>8.2f}{r['p99_ms']:>8.2f}"
                f"{fmt(r.get('overhead_p50_ms'), '+.2f'):>8}"
                f"{fmt(r.get('overhead_p99_ms'), '+.2f'):>8}"
                f"{fmt(r.get('paired_median_diff_ms'), '+.2f'):>8}"
            )
        if overhead.get("engine_ttft_mean_ms") is not None:
            paths = {k: round(1e3 * v, 2) for k, v in overhead["request_path_s"].items()}
            print(
                f"engine TTFT of these requests {overhead['engine_ttft_mean_ms']:.2f} ms; "
                f"request path (client latency less engine TTFT), ms: {paths}"
            )


def targets(rows: list[dict]) -> dict[str, Any]:
    by = {(r["workload"], r["policy"]): r for r in rows}
    result: dict[str, Any] = {}
    rr, pa = by.get(("multi-turn", "round-robin")), by.get(("multi-turn", "prefix-aware"))
    if rr and pa:
        speedup = rr["ttft_mean_ms"] / pa["ttft_mean_ms"]
        result["multi_turn_speedup"] = {
            "target": TARGET_SPEEDUP, "value": speedup, "met": speedup >= TARGET_SPEEDUP,
        }  # fmt: skip
    errors = {f"{r['workload']}/{r['policy']}": r.get("sim_error") for r in rows}
    if errors and all(e is not None for e in errors.values()):
        worst = max(abs(e) for e in errors.values())
        result["sim_error"] = {
            "target": TARGET_SIM_ERROR, "worst_abs": worst, "met": worst <= TARGET_SIM_ERROR,
            "per_row": errors,
        }  # fmt: skip
    return result
