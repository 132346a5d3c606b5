"""Scheduling policies in simulation: the same workload, predictions and policies as
benchmarks/policies.py, at full Azure lengths and larger scale, on one simulated instance
(the real Scheduler and KV cache manager, corral.sim's SimExecutor and roofline cost model for an
8B model on an H100, a virtual clock). Deterministic: the same arguments give the same numbers.

    .venv/bin/python -m benchmarks.policies_sim --num-requests 4000 --load 0.9

(corral.sim's ClusterSimulator builds its Requests itself and has no hook for predicted lengths
yet, so this script drives one instance with a small event loop of its own.)
"""

from __future__ import annotations

import argparse
from array import array
from dataclasses import replace

from benchmarks.policies_common import (
    RUNS,
    RunResult,
    azure_workload,
    deadline_s,
    prediction_tau,
    predictions_for,
    report,
    save_json,
    summarize_run,
)
from corral.config import SchedulerConfig
from corral.core.kv_cache import KVCacheManager
from corral.core.scheduler import Scheduler
from corral.core.slo_target import SLO, parse_slo
from corral.request import Request
from corral.sampling_params import SamplingParams
from corral.sim.config import InstanceSpec
from corral.sim.deployment import DeploymentOptions, build_cluster
from corral.sim.executor import SimExecutor
from corral.workloads import Workload
from corral.workloads.metrics import RequestRecord
from corral.workloads.tokens import PLACEHOLDER_TOKEN_ID

# End of sequence, distinct from the simulator's placeholder token.
_EOS = PLACEHOLDER_TOKEN_ID + 1


def simulate(
    instance: InstanceSpec,
    policy: str,
    workload: Workload,
    predicted: dict[str, int] | None,
    slo: SLO,
    time_scale: float = 1.0,
    kv_reservation: str = "none",
    max_tokens_allowance: int | None = None,
) -> tuple[list[RequestRecord], Scheduler, float]:
    """Run the workload on one simulated instance; records use the virtual clock.

    With max_tokens_allowance, each request may generate that many tokens (max_tokens) but
    stops at its true length with an end-of-sequence token, as a real model would; otherwise
    max_tokens is the true length."""
    now = 0.0

    def clock() -> float:
        return now

    config = replace(instance.scheduler, policy=policy, kv_reservation=kv_reservation)
    kv = KVCacheManager(instance.num_blocks, instance.block_size, prefix_hash="builtin")
    scheduler = Scheduler(config, kv, instance.max_model_len, clock=clock)
    executor = SimExecutor(instance.cost_model)
    lengths = {spec.request_id: spec.num_output_tokens for spec in workload}
    specs = list(workload)
    records: dict[str, RequestRecord] = {}
    next_index = 0
    while next_index < len(specs) or scheduler.has_unfinished_requests():
        while next_index < len(specs) and specs[next_index].arrival_time_s * time_scale <= now:
            spec = specs[next_index]
            max_tokens = spec.num_output_tokens
            if max_tokens_allowance is not None:
                room = instance.max_model_len - spec.num_prompt_tokens
                max_tokens = max(min(max_tokens_allowance, room), max_tokens)
            request = Request(
                spec.request_id,
                workload.token_ids(spec),
                SamplingParams(max_tokens=max_tokens),
                eos_token_ids=frozenset({_EOS}),
                max_model_len=instance.max_model_len,
                arrival_time=spec.arrival_time_s * time_scale,
                priority=spec.priority,
                client_id=spec.client_id,
                deadline_s=deadline_s(spec, slo),
            )
            if predicted is not None:
                request.predicted_num_output_tokens = predicted[spec.request_id]
            scheduler.add_request(request)
            records[spec.request_id] = RequestRecord(
                spec.request_id, request.arrival_time, spec.num_prompt_tokens, 0, array("d")
            )
            next_index += 1
        if not scheduler.has_unfinished_requests():
            now = specs[next_index].arrival_time_s * time_scale
            continue
        scheduler_output = scheduler.schedule()
        if scheduler_output.total_num_scheduled_tokens == 0:
            raise RuntimeError(f"nothing could be scheduled at t={now:.3f} s ({policy})")
        model_output = executor.execute(scheduler_output)
        sampled = model_output.sampled_token_ids
        for request_id in sampled:
            if scheduler.requests[request_id].num_output_tokens + 1 >= lengths[request_id]:
                sampled[request_id] = [_EOS]  # the true length is reached
        now += model_output.step_time_s
        for update in scheduler.update(scheduler_output, model_output):
            if update.new_token_ids:
                record = records[update.request_id]
                record.num_output_tokens += len(update.new_token_ids)
                record.token_times_s.append(now)  # type: ignore[attr-defined]
    return [records[spec.request_id] for spec in specs], scheduler, now


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-requests", type=int, default=4000)
    parser.add_argument("--load", type=float, default=0.9, help="arrival rate / capacity")
    parser.add_argument("--cv", type=float, default=3.0, help="burstiness of gamma arrivals")
    parser.add_argument("--length-scale", type=float, default=1.0)
    parser.add_argument("--max-model-len", type=int, default=8192)
    parser.add_argument("--max-num-seqs", type=int, default=32)
    parser.add_argument("--model", default="llama-3.1-8b")
    parser.add_argument("--hardware", default="h100")
    parser.add_argument("--capacity-requests", type=int, default=1000)
    parser.add_argument("--slo", default="ttft_ms=2000,tpot_ms=100")
    parser.add_argument("--runs", default=",".join(run.label for run in RUNS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the results as JSON")
    args = parser.parse_args()
    slo = parse_slo(args.slo)
    cluster = build_cluster(
        DeploymentOptions(
            model=args.model,
            hardware=args.hardware,
            max_model_len=args.max_model_len,
            scheduler=SchedulerConfig(max_num_seqs=args.max_num_seqs),
        )
    )
    instance = cluster.instances[0]
    shape = dict(
        length_scale=args.length_scale,
        max_model_len=args.max_model_len,
        vocab_size=32000,
        seed=args.seed,
    )
    probe = azure_workload(args.capacity_requests, 1.0, args.cv, **shape)
    _, _, makespan_s = simulate(instance, "fcfs", probe, None, slo, time_scale=0.0)
    capacity = len(probe) / makespan_s
    rate = args.load * capacity
    print(f"capacity {capacity:.2f} req/s under FCFS; replaying at {rate:.2f} req/s")
    workload = azure_workload(args.num_requests, rate, args.cv, **shape)
    specs = list(workload)
    history = list(azure_workload(4000, rate, args.cv, **shape, trace_offset=10_000))
    wanted = args.runs.split(",")
    results: list[RunResult] = []
    for run in RUNS:
        if run.label not in wanted:
            continue
        predicted = (
            predictions_for(run.predictions, specs, history, args.seed) if run.predictions else None
        )
        records, scheduler, _ = simulate(instance, run.policy, workload, predicted, slo)
        extra = {"num_preemptions": float(scheduler.num_preemptions)}
        if predicted is not None:
            extra["kendall_tau"] = prediction_tau(specs, predicted)
        results.append(summarize_run(run, records, slo, **extra))
    title = (
        f"simulated {args.model} on {args.hardware}, {len(specs)} azure-conv requests, gamma "
        f"arrivals {rate:.2f} req/s cv={args.cv}, max_num_seqs={args.max_num_seqs}, "
        f"SLO {slo.describe()}"
    )
    print(report([results], title))
    if args.out:
        save_json([results], args.out, title=title, rate=rate, args=vars(args))


if __name__ == "__main__":
    main()
