"""Simulation speed: the whole Azure-conversation trace at 10x its rate on 64 instances.

Reports wall time per phase (workload, cluster construction, event loop) and simulated requests
per wall-second, for the roofline cost model.

    .venv/bin/python -m benchmarks.sim_scale --model llama-3.1-8b --tp 1
    .venv/bin/python -m benchmarks.sim_scale --model llama-3.1-70b --tp 4
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from corral.config import SchedulerConfig
from corral.sim.cluster import ClusterSimulator
from corral.sim.deployment import DeploymentOptions, build_cluster
from corral.sim.report import build_report, format_report
from corral.workloads import ArrivalOptions, WorkloadOptions, build_workload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama-3.1-8b")
    parser.add_argument("--hardware", default="h100")
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--num-instances", type=int, default=64)
    parser.add_argument("--time-scale", type=float, default=0.1)
    parser.add_argument("--num-requests", type=int, default=None, help="default: whole trace")
    parser.add_argument("--router", default="least-outstanding")
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--max-num-batched-tokens", type=int, default=8192)
    parser.add_argument("--max-model-len", type=int, default=16384)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    start = time.perf_counter()
    workload = build_workload(
        WorkloadOptions(
            dataset="azure-conv",
            num_requests=args.num_requests,
            arrival=ArrivalOptions("trace", time_scale=args.time_scale),
            vocab_size=32000,
        )
    )
    workload_s = time.perf_counter() - start
    options = DeploymentOptions(
        model=args.model,
        hardware=args.hardware,
        tensor_parallel_size=args.tp,
        num_instances=args.num_instances,
        router=args.router,
        max_model_len=args.max_model_len,
        scheduler=SchedulerConfig(
            max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens
        ),
    )
    start = time.perf_counter()
    simulator = ClusterSimulator(build_cluster(options), workload)
    build_s = time.perf_counter() - start
    cpu_start = time.process_time()
    result = simulator.run()
    loop_cpu_s = time.process_time() - cpu_start
    report = build_report(result)
    print(format_report(report, f"sim_scale: {args.model} tp{args.tp} on {args.hardware}"))
    num_steps = sum(i.num_steps for i in report.instances)
    total_s = workload_s + build_s + result.wall_time_s
    line = (
        f"\nphases: workload {workload_s:.1f} s, cluster {build_s:.1f} s, event loop "
        f"{result.wall_time_s:.1f} s ({loop_cpu_s:.1f} s CPU; {num_steps} steps, "
        f"{1e6 * result.wall_time_s / num_steps:.1f} us/step); total {total_s:.1f} s; "
        f"{len(workload) / result.wall_time_s:.0f} simulated requests per wall-second (event "
        f"loop), {len(workload) / total_s:.0f} overall"
    )
    print(line)
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "args": vars(args) | {"out": str(args.out)},
                    "workload_s": workload_s,
                    "build_s": build_s,
                    "loop_s": result.wall_time_s,
                    "loop_cpu_s": loop_cpu_s,
                    "num_steps": num_steps,
                    "num_requests": len(workload),
                    "report": report.to_dict(with_kv_samples=False),
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
