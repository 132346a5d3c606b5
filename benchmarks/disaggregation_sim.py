"""The simulator's prediction of a disaggregation benchmark run (benchmarks/disaggregation.py):
the run's workload through `corral simulate` with the benchmark's fitted profile, 2 colocated
instances (least-outstanding) or 1 prefill + 1 decode instance whose transfers are priced at
the bandwidth the disaggregated runs measured (the decode replica's fetched bytes over its
fetch seconds, latency 0: the fixed costs are inside that time)."""

from __future__ import annotations

import argparse
from typing import Any

from corral.config import SchedulerConfig
from corral.core.slo_target import SLO
from corral.sim.api import simulate_result
from corral.sim.deployment import DeploymentOptions
from corral.sim.report import build_report
from corral.workloads import Workload

DEFAULT_BANDWIDTH_BYTES_PER_S = 1e9  # when no disaggregated run measured one


def measured_bandwidth(runs: list[dict]) -> float:
    total_bytes = sum(r["transfer"]["bytes"] for r in runs if r.get("transfer"))
    total_s = sum(r["transfer"]["seconds"] for r in runs if r.get("transfer"))
    return total_bytes / total_s if total_bytes and total_s else DEFAULT_BANDWIDTH_BYTES_PER_S


def simulate_config(
    run: dict, workload: Workload, profile_path: str, args: argparse.Namespace, runs: list[dict]
) -> dict[str, Any]:
    disaggregated = run["config"] == "disaggregated"
    deployment = DeploymentOptions(
        cost_model="profiled",
        profile_path=profile_path,
        num_instances=2,
        num_prefill_instances=1 if disaggregated else 0,
        num_decode_instances=1 if disaggregated else 0,
        router="least-outstanding",
        scheduler=SchedulerConfig(
            max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens
        ),
        block_size=16,
        num_blocks=args.num_kv_blocks,
        max_model_len=args.max_model_len,
        kv_transfer_bandwidth_bytes_per_s=measured_bandwidth(runs),
    )
    result = simulate_result(workload, deployment)
    slo = SLO(ttft_s=args.slo_ttft_ms / 1e3, tpot_s=args.slo_tpot_ms / 1e3)
    summary = build_report(result, slo=slo).summary
    return {
        "ttft_p50_ms": summary.ttft.median_ms,
        "ttft_p99_ms": summary.ttft.p99_ms,
        "tpot_p50_ms": summary.tpot.median_ms,
        "tpot_p99_ms": summary.tpot.p99_ms,
        "goodput_rps": summary.goodput,
        "bandwidth_bytes_per_s": deployment.kv_transfer_bandwidth_bytes_per_s,
    }
