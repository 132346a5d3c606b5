"""KV reservation at admission (S3-style) in simulation: on-demand paging (none) preempts when
the pool runs out, worst-case reservation (max) never preempts but runs small batches, and
reservation by predicted length (predicted) sits between. FCFS, Azure conversation lengths,
an 8B model on an H100 with a deliberately small KV pool, every request allowed max_tokens
tokens of output (as a server's default would), so the worst case is far from the truth.

    .venv/bin/python -m benchmarks.policies_reservation
"""

from __future__ import annotations

import argparse

from benchmarks.policies_common import azure_workload, predictions_for
from benchmarks.policies_sim import simulate
from corral.config import SchedulerConfig
from corral.core.slo_target import SLO
from corral.sim.deployment import DeploymentOptions, build_cluster
from corral.workloads.metrics import summarize

RUNS = [
    ("none", "none", None),
    ("max", "max", None),
    ("predicted (oracle)", "predicted:headroom=0", "oracle"),
    ("predicted (gsm8k error)", "predicted:headroom=0.2", "gsm8k-error"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-requests", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=20.0, help="requests/s (overload)")
    parser.add_argument("--num-blocks", type=int, default=3000, help="KV pool (16-token blocks)")
    parser.add_argument("--max-num-seqs", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=2048, help="each request's allowance")
    args = parser.parse_args()
    cluster = build_cluster(
        DeploymentOptions(
            max_model_len=8192,
            num_blocks=args.num_blocks,
            scheduler=SchedulerConfig(max_num_seqs=args.max_num_seqs),
        )
    )
    instance = cluster.instances[0]
    shape = dict(length_scale=1.0, max_model_len=8192, vocab_size=32000)
    workload = azure_workload(args.num_requests, args.rate, 1.0, **shape)
    specs = list(workload)
    history = list(azure_workload(4000, args.rate, 1.0, **shape, trace_offset=10_000))
    print(
        f"simulated llama-3.1-8b on h100, {args.num_blocks} KV blocks of 16 tokens, "
        f"{len(specs)} azure-conv requests at {args.rate:g} req/s (Poisson), FCFS, "
        f"max_tokens allowance {args.max_tokens}"
    )
    print(f"{'reservation':<26}{'preemptions':>12}{'tok/s':>9}{'mean e2e s':>12}{'p99 e2e s':>11}")
    for label, reservation, source in RUNS:
        predicted = predictions_for(source, specs, history) if source else None
        records, scheduler, _ = simulate(
            instance,
            "fcfs",
            workload,
            predicted,
            SLO(),
            kv_reservation=reservation,
            max_tokens_allowance=args.max_tokens,
        )
        summary = summarize(records)
        print(
            f"{label:<26}{scheduler.num_preemptions:>12}{summary.output_throughput:>9.1f}"
            f"{(summary.e2e.mean_ms or 0) / 1e3:>12.2f}{(summary.e2e.p99_ms or 0) / 1e3:>11.2f}"
        )


if __name__ == "__main__":
    main()
