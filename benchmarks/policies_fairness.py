"""Fairness under a flood: the service a well-behaved client receives while another client sends
far more than its share, FCFS against the Virtual Token Counter (fair).

The flooding client sends flood_load x capacity requests/s (Poisson), the well-behaved one
polite_load x capacity, every request the same shape. Reported per client: requests served,
output tokens/s received during the flood, mean and p99 end-to-end latency. In simulation by
default (an 8B model on an H100, virtual clock); --engine replays on the real engine instead.

    .venv/bin/python -m benchmarks.policies_fairness
    .venv/bin/python -m benchmarks.policies_fairness --engine --num-requests 300
"""

from __future__ import annotations

import argparse
import zlib

import numpy as np

from corral.core.slo_target import SLO
from corral.workloads import RequestSpec, Workload
from corral.workloads.arrivals import PoissonArrivals
from corral.workloads.metrics import RequestRecord


def two_client_workload(
    num_requests: int,
    capacity: float,
    flood_load: float,
    polite_load: float,
    num_prompt_tokens: int,
    num_output_tokens: int,
    vocab_size: int,
) -> Workload:
    """The flood's num_requests requests and the polite client's over the same span."""
    flood_rate, polite_rate = flood_load * capacity, polite_load * capacity
    flood_times = PoissonArrivals(flood_rate).times(num_requests, seed=1)
    num_polite = max(2, int(flood_times[-1] * polite_rate))
    polite_times = PoissonArrivals(polite_rate).times(num_polite, seed=2)
    specs = [
        RequestSpec(
            f"{client}-{index}",
            time_s,
            num_prompt_tokens,
            num_output_tokens,
            token_seed=zlib.crc32(f"{client}-{index}".encode()),
            client_id=client,
        )
        for client, times in (("flood", flood_times), ("polite", polite_times))
        for index, time_s in enumerate(times)
    ]
    return Workload("two-clients", specs, vocab_size)


def per_client(records: list[RequestRecord], workload: Workload) -> dict[str, dict[str, float]]:
    """Per client: requests, output tokens/s during the flood, mean and p99 e2e (s)."""
    client_of = {spec.request_id: spec.client_id for spec in workload}
    flood_end = max(spec.arrival_time_s for spec in workload if spec.client_id == "flood")
    rows: dict[str, dict[str, float]] = {}
    for client in ("flood", "polite"):
        mine = [r for r in records if client_of[r.request_id] == client and r.is_ok]
        e2e = np.array([r.e2e_s for r in mine])
        tokens = sum(sum(1 for t in r.token_times_s if t <= flood_end) for r in mine)
        rows[client] = {
            "requests": float(len(mine)),
            "tokens_per_s": tokens / flood_end,
            "mean_e2e_s": float(e2e.mean()),
            "p99_e2e_s": float(np.percentile(e2e, 99)),
        }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", action="store_true", help="the real engine (step clock)")
    parser.add_argument("--num-requests", type=int, default=1500, help="flood requests")
    parser.add_argument("--flood-load", type=float, default=2.0)
    parser.add_argument("--polite-load", type=float, default=0.2)
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--max-num-seqs", type=int, default=32)
    parser.add_argument("--policies", default="fcfs,fair")
    args = parser.parse_args()
    if args.engine:
        from benchmarks.policies import make_engine, replay, warm_up
        from benchmarks.policies_clocks import CPUClock, StepCostClock, fit_step_cost

        engine_args = argparse.Namespace(
            model=None,
            max_model_len=1024,
            max_num_seqs=args.max_num_seqs,
            num_blocks=1024,
            num_threads=1,
        )
        vocab_size = make_engine(engine_args, "fcfs").vocab_size
        # The probe (time_scale 0) fits the step costs; every later run uses the step clock.
        step_costs: list[tuple[float, ...]] = []

        def run(policy: str, workload: Workload, time_scale: float = 1.0):
            engine = make_engine(engine_args, policy)
            warm_up(engine)
            if step_costs:
                clock = StepCostClock(step_costs[0])
                return replay(engine, workload, None, SLO(), time_scale, clock=clock)
            samples: list = []
            replay(engine, workload, None, SLO(), time_scale, CPUClock(), samples)
            step_costs.append(fit_step_cost(samples))
            clock = StepCostClock(step_costs[0])
            for output, _ in samples:
                clock.after_step(output)
            return [], clock()
    else:
        from benchmarks.policies_sim import simulate
        from corral.config import SchedulerConfig
        from corral.sim.deployment import DeploymentOptions, build_cluster

        instance = build_cluster(
            DeploymentOptions(scheduler=SchedulerConfig(max_num_seqs=args.max_num_seqs))
        ).instances[0]
        vocab_size = 32000

        def run(policy: str, workload: Workload, time_scale: float = 1.0):
            records, _, end_s = simulate(instance, policy, workload, None, SLO(), time_scale)
            return records, end_s

    shape = dict(
        num_prompt_tokens=args.prompt_len, num_output_tokens=args.output_len, vocab_size=vocab_size
    )
    probe = two_client_workload(200, 1.0, 1.0, 0.0001, **shape)
    _, burst_s = run("fcfs", probe, time_scale=0.0)
    capacity = len(probe) / burst_s
    workload = two_client_workload(
        args.num_requests, capacity, args.flood_load, args.polite_load, **shape
    )
    print(
        f"{'engine (step clock)' if args.engine else 'simulation'}: capacity {capacity:.2f} req/s; "
        f"flood at {args.flood_load:g}x, polite client at {args.polite_load:g}x capacity, "
        f"{args.prompt_len} prompt + {args.output_len} output tokens per request"
    )
    print(
        f"{'policy':<8}{'client':<8}{'requests':>9}{'tok/s in flood':>16}{'mean e2e s':>12}"
        f"{'p99 e2e s':>11}"
    )
    demand = args.polite_load * capacity * args.output_len
    for policy in args.policies.split(","):
        records, _ = run(policy, workload)
        for client, row in per_client(records, workload).items():
            print(
                f"{policy:<8}{client:<8}{row['requests']:>9.0f}{row['tokens_per_s']:>16.1f}"
                f"{row['mean_e2e_s']:>12.2f}{row['p99_e2e_s']:>11.2f}"
            )
    print(f"(the polite client asks for about {demand:.1f} output tokens/s)")


if __name__ == "__main__":
    main()
