"""Scheduling policies on the real engine: a bursty replay of Azure conversation lengths with
gamma arrivals, in real time, in process (LLMEngine.add_request / step), one fresh engine per
policy. Reports mean and p99 end-to-end latency, TTFT and goodput against FCFS, and how far
predicted-length SJF is from the oracle (true-length) SJF.

    .venv/bin/python -m benchmarks.policies --num-requests 600 --load 0.9 --out policies.json

The arrival rate is load x the capacity measured first (requests/s of a burst of the same
requests under FCFS), so the replay is equally loaded on any machine. max_num_seqs bounds the
batch (as KV memory does on a GPU), so bursts queue and the policy decides who waits.
"""

from __future__ import annotations

import argparse
import time
from array import array

from benchmarks.policies_clocks import CPUClock, fit_step_cost, make_clock, step_cost_s
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
from benchmarks.sim_replay import stamp_outputs
from corral.core.messages import SchedulerOutput
from corral.core.slo_target import SLO, parse_slo
from corral.engine.llm_engine import LLMEngine
from corral.llm import engine_config_from_kwargs
from corral.sampling_params import OutputKind, SamplingParams
from corral.workloads import Workload
from corral.workloads.metrics import RequestRecord


def benchmark_model_dir() -> str:
    """A small random Llama (128 hidden, 4 layers, 2048 positions, bf16) with the demo
    tokenizer, built once into corral's cache: the same model whatever the bundled demo is."""
    from corral.demo import BUNDLED_MODELS_DIR, DEFAULT_MODEL_NAME
    from corral.demo.fallback import TINY_LLAMA_SHAPE
    from corral.paths import cache_dir

    target = cache_dir() / "bench-policies-llama-v1"
    if not (target / "config.json").is_file():
        from transformers import AutoTokenizer

        from corral.demo.random_model import build_random_model

        tokenizer = AutoTokenizer.from_pretrained(BUNDLED_MODELS_DIR / DEFAULT_MODEL_NAME)
        build_random_model(
            target,
            seed=0,
            dtype="bfloat16",
            tokenizer=tokenizer,
            **TINY_LLAMA_SHAPE,
        )
    return str(target)


def make_engine(args: argparse.Namespace, policy: str) -> LLMEngine:
    return LLMEngine(
        engine_config_from_kwargs(
            model=args.model or benchmark_model_dir(),
            max_model_len=args.max_model_len,
            max_num_seqs=args.max_num_seqs,
            num_blocks=args.num_blocks,
            num_threads=args.num_threads,
            scheduling_policy=policy,
        )
    )


def replay(
    engine: LLMEngine,
    workload: Workload,
    predicted: dict[str, int] | None,
    slo: SLO,
    time_scale: float = 1.0,
    clock: CPUClock | None = None,
    step_samples: list[tuple[SchedulerOutput, float]] | None = None,
) -> tuple[list[RequestRecord], float]:
    """Add each request at its arrival time, step while there is work; the engine's scheduler
    reads the same clock (policies_clocks.py). step_samples, if given, collects each step's
    scheduler output and CPU seconds. Returns the records and the run's length on the clock."""
    clock = clock or CPUClock()
    engine.scheduler.clock = clock
    outputs_seen: list[SchedulerOutput] = []
    schedule = engine.scheduler.schedule

    def recording_schedule() -> SchedulerOutput:
        output = schedule()
        outputs_seen.append(output)
        return output

    engine.scheduler.schedule = recording_schedule  # type: ignore[method-assign]
    specs = list(workload)
    prompts = [workload.token_ids(spec) for spec in specs]
    records: dict[str, RequestRecord] = {}
    next_index = 0
    while next_index < len(specs) or engine.has_unfinished_requests():
        now = clock()
        while next_index < len(specs) and specs[next_index].arrival_time_s * time_scale <= now:
            spec = specs[next_index]
            params = SamplingParams(
                temperature=0.0,
                max_tokens=spec.num_output_tokens,
                ignore_eos=True,
                detokenize=False,
                output_kind=OutputKind.DELTA,
            )
            engine.add_request(
                spec.request_id,
                {"prompt_token_ids": prompts[next_index]},
                params,
                arrival_time=spec.arrival_time_s * time_scale,
                priority=spec.priority,
                client_id=spec.client_id,
                deadline_s=deadline_s(spec, slo),
                predicted_num_output_tokens=predicted.get(spec.request_id) if predicted else None,
            )
            records[spec.request_id] = RequestRecord(
                spec.request_id,
                spec.arrival_time_s * time_scale,
                spec.num_prompt_tokens,
                0,
                array("d"),
            )
            next_index += 1
        if engine.has_unfinished_requests():
            started_s = time.process_time()
            outputs = engine.step()
            scheduler_output = outputs_seen.pop()
            if step_samples is not None:
                step_samples.append((scheduler_output, time.process_time() - started_s))
            clock.after_step(scheduler_output)
            stamp_outputs(records, outputs, clock())
        elif next_index < len(specs):
            clock.skip_to(specs[next_index].arrival_time_s * time_scale)
    return [records[spec.request_id] for spec in specs], clock()


def warm_up(engine: LLMEngine) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, detokenize=False)
    for index in range(4):
        engine.add_request(f"warm-{index}", {"prompt_token_ids": [5] * (16 + 64 * index)}, params)
    while engine.has_unfinished_requests():
        engine.step()


def measure_capacity(
    args: argparse.Namespace, workload: Workload
) -> tuple[float, tuple[float, ...] | None]:
    """Requests/s that FCFS sustains on a burst of the workload's requests (on args.clock), and
    for the step clock the fitted step costs."""
    engine = make_engine(args, "fcfs")
    warm_up(engine)
    burst = Workload(
        workload.name, list(workload.specs)[: args.capacity_requests], workload.vocab_size
    )
    samples: list[tuple[SchedulerOutput, float]] = []
    clock = make_clock("cpu" if args.clock == "step" else args.clock)
    _, run_s = replay(engine, burst, None, SLO(), time_scale=0.0, clock=clock, step_samples=samples)
    if args.clock != "step":
        return len(burst) / run_s, None
    coefficients = fit_step_cost(samples)
    modeled_s = sum(step_cost_s(coefficients, output) for output, _ in samples)
    return len(burst) / modeled_s, coefficients


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model dir (default: a random 4-layer Llama)")
    parser.add_argument("--num-requests", type=int, default=600)
    parser.add_argument("--load", type=float, default=0.9, help="arrival rate / capacity")
    parser.add_argument("--rate", type=float, default=None, help="requests/s (skips --load)")
    parser.add_argument("--cv", type=float, default=3.0, help="burstiness of gamma arrivals")
    parser.add_argument("--length-scale", type=float, default=0.25)
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--max-num-seqs", type=int, default=8)
    parser.add_argument("--num-blocks", type=int, default=1024)
    parser.add_argument("--num-threads", type=int, default=1)
    parser.add_argument("--capacity-requests", type=int, default=150)
    parser.add_argument("--slo", default="ttft_ms=2000,tpot_ms=100")
    parser.add_argument("--runs", default=",".join(run.label for run in RUNS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=1, help="repeat all runs; report medians")
    parser.add_argument(
        "--clock",
        choices=("step", "cpu", "wall"),
        default="step",
        help="step: fitted CPU cost per step (reproducible); cpu: process CPU seconds; wall",
    )
    parser.add_argument("--out", default=None, help="write the results as JSON")
    args = parser.parse_args()
    slo = parse_slo(args.slo)
    vocab_size = make_engine(args, "fcfs").vocab_size
    shape = dict(
        length_scale=args.length_scale,
        max_model_len=args.max_model_len,
        vocab_size=vocab_size,
        seed=args.seed,
    )
    rate, coefficients = args.rate, None
    if args.clock == "step" and rate is not None:
        parser.error("--clock step fits its step costs while measuring capacity: use --load")
    if rate is None:
        probe = azure_workload(args.capacity_requests, 1.0, args.cv, **shape)
        capacity, coefficients = measure_capacity(args, probe)
        rate = args.load * capacity
        print(f"capacity {capacity:.2f} req/s under FCFS; replaying at {rate:.2f} req/s")
        if coefficients:
            a, b, c = coefficients
            print(
                f"step cost: {a * 1e3:.3f} ms + {b * 1e6:.2f} us/token + {c * 1e6:.1f} us/request"
            )
    workload = azure_workload(args.num_requests, rate, args.cv, **shape)
    specs = list(workload)
    history = list(azure_workload(4000, rate, args.cv, **shape, trace_offset=10_000))
    wanted = args.runs.split(",")
    rounds: list[list[RunResult]] = []
    for round_index in range(args.rounds):
        results: list[RunResult] = []
        for run in RUNS:
            if run.label not in wanted:
                continue
            predicted = None
            if run.predictions:
                predicted = predictions_for(run.predictions, specs, history, args.seed)
            engine = make_engine(args, run.policy)
            warm_up(engine)
            clock = make_clock(args.clock, coefficients)
            records, run_s = replay(engine, workload, predicted, slo, clock=clock)
            extra = {"run_s": run_s, "num_preemptions": float(engine.scheduler.num_preemptions)}
            if predicted is not None:
                extra["kendall_tau"] = prediction_tau(specs, predicted)
            results.append(summarize_run(run, records, slo, **extra))
            print(
                f"round {round_index}: {run.label}: {run_s:.1f} s ({args.clock} clock), "
                f"{engine.scheduler.num_preemptions} preemptions",
                flush=True,
            )
        rounds.append(results)
    title = (
        f"real engine, {len(specs)} azure-conv requests (lengths x{args.length_scale}), "
        f"gamma arrivals {rate:.2f} req/s cv={args.cv}, max_num_seqs={args.max_num_seqs}, "
        f"SLO {slo.describe()}, {args.clock} clock"
    )
    print(report(rounds, title))
    if args.out:
        save_json(rounds, args.out, title=title, rate=rate, args=vars(args))


if __name__ == "__main__":
    main()
