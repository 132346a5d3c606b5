"""Simulator fidelity: the same workload through the real engine and through `corral simulate`.

1. Profile the real engine on this machine (corral.sim.profile; or reuse --profile).
2. For each request rate: replay a scaled Azure-conversation workload on the real engine
   (benchmarks/sim_replay.py) --real-repeats times, alternating rates, and simulate it once (it is
   deterministic) on one instance with the `profiled` cost model and the same scheduler settings.
3. Report the simulator's relative error against the mean of the real runs, with their range,
   on mean and p99 TTFT, mean TPOT and throughput; and, per real run, the profile's error on that
   run's own steps (which separates cost-model error from a machine that drifted).

--target serve replays through a real `corral serve` (same engine settings) measured by
`corral bench` over HTTP, instead of the in-process engine (no step-level error then).

--calibration-requests N also serves N other requests of the trace (from --calibration-offset),
in slices before each real run, with the engine's step log on, and simulates with a second
profile fitted to the steps of those slices (corral.sim.profile_log): the cost model measured in
the serving regime itself, on requests the compared runs do not contain. The step log also gives
each run's engine-side TTFT (so the HTTP path's share of the client's TTFT is reported).

    .venv/bin/python -m benchmarks.sim_fidelity --rates 0.4,0.8 --out fidelity.json
    .venv/bin/python -m benchmarks.sim_fidelity --target serve --profile fidelity-profile.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

from benchmarks.common import smollm_shaped_model
from benchmarks.sim_fidelity_report import (
    compare,
    engine_side_ttft,
    print_table,
    step_level_error,
)
from benchmarks.sim_fidelity_workloads import fresh_ids, split_workload, workload_at
from benchmarks.sim_replay import replay
from corral.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
from corral.sim.api import simulate_result
from corral.sim.cost.profiled import ProfiledCostModel
from corral.sim.deployment import DeploymentOptions
from corral.sim.profile import ProfileGrid, ShapeRecorder, profile_engine
from corral.sim.report import build_report
from corral.workloads.metrics import summarize


def warm_up(engine) -> None:
    """One request through a fresh engine, so that first-use costs stay out of the replays."""
    from corral.sampling_params import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, detokenize=False)
    engine.add_request("warm-up", {"prompt_token_ids": list(range(1, 200))}, params)
    while engine.has_unfinished_requests():
        engine.step()


def replay_once(engine, workload, profile: ProfiledCostModel, clock: str) -> dict:
    load_before = os.getloadavg()[0]
    recorder = ShapeRecorder(engine.core.executor)
    recorder.shapes = []
    engine.core.executor = recorder
    try:
        records, duration_s, step_times = replay(engine, workload, clock=clock)
    finally:
        engine.core.executor = recorder.inner
    return {
        "summary": summarize(records),
        "duration_s": duration_s,
        "load": [load_before, os.getloadavg()[0]],
        "step_error": step_level_error(profile, recorder.shapes, step_times),
    }


def serve_once(url: str, model_name: str, workload) -> dict:
    """The workload against a running `corral serve`, timed by `corral bench` (token ids)."""
    from corral.bench.payload import RequestOptions
    from corral.bench.serve import ServeTarget, run_serve_benchmark

    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    target = ServeTarget(url, show_progress=False)
    report, _ = run_serve_benchmark(workload, RequestOptions(model=model_name), target)
    return {
        "summary": report.summary,
        # Per request: sent (seconds since the run's start), TTFT and E2E (seconds).
        "requests": [
            [r.record.arrival_time_s, r.record.ttft_s, r.record.e2e_s, r.record.num_output_tokens]
            for r in report.run.records
            if r.record.is_ok
        ],
        "duration_s": time.perf_counter() - start,
        "load": [load_before, os.getloadavg()[0]],
        "step_error": None,
    }


def server_args(config: EngineConfig, args: argparse.Namespace) -> list[str]:
    return [
        "--model", config.model.model, "--dtype", args.dtype,
        "--max-model-len", str(args.max_model_len), "--num-threads", str(args.threads),
        "--seed", str(args.seed), "--num-kv-blocks", str(args.num_kv_blocks),
        "--max-num-seqs", str(args.max_num_seqs),
        "--max-num-batched-tokens", str(args.max_num_batched_tokens),
    ] + (["--step-log", str(args.step_log)] if args.step_log else [])  # fmt: skip


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default=None, help="default: SmolLM-135M-shaped random")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rates", default="0.4,0.8", help="requests/s, comma-separated")
    parser.add_argument("--num-requests", type=int, default=100)
    parser.add_argument("--trace-offset", type=int, default=0)
    parser.add_argument("--length-scale", type=float, default=0.125)
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--max-num-seqs", type=int, default=32)
    parser.add_argument("--max-num-batched-tokens", type=int, default=512)
    parser.add_argument("--num-kv-blocks", type=int, default=1024)
    parser.add_argument("--profile", default=None, help="reuse this profile instead of profiling")
    parser.add_argument("--profile-out", default="/tmp/corral-fidelity-profile.json")
    parser.add_argument("--repeats", type=int, default=2, help="profile grid passes")
    parser.add_argument(
        "--idle-gap-s", type=float, default=0.0, help="profile: pause before every timed step"
    )
    parser.add_argument(
        "--calibration-requests",
        type=int,
        default=0,
        help="also serve this many other requests of the trace (from --calibration-offset), "
        "in slices before each real run, with a step log; simulate also with a profile fitted "
        "to the log of those slices (0: no)",
    )
    parser.add_argument(
        "--fit-target", choices=("mean", "typical"), default="mean", help="see ProfiledCostModel"
    )
    parser.add_argument("--calibration-offset", type=int, default=1000)
    parser.add_argument("--calibration-rate", type=float, default=0.6)
    parser.add_argument("--calibrated-profile-out", default="/tmp/corral-fidelity-calibrated.json")
    parser.add_argument(
        "--step-log",
        type=Path,
        default=Path("/tmp/corral-fidelity-steps.jsonl"),
        help="the engine's step log (rewritten each run)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--real-repeats", type=int, default=3, help="real replays per rate (alternating rates)"
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: real time (a quiet machine); cpu: process CPU time (a shared machine)",
    )
    parser.add_argument(
        "--target",
        choices=("engine", "serve"),
        default="engine",
        help="engine: the in-process LLMEngine; serve: `corral serve` over HTTP, via corral bench",
    )
    parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    model_dir = args.model_dir or str(smollm_shaped_model())
    calibrating = args.calibration_requests > 0
    if calibrating:
        args.step_log.unlink(missing_ok=True)
    config = EngineConfig(
        model=ModelConfig(
            model=model_dir,
            dtype=args.dtype,
            max_model_len=args.max_model_len,
            num_threads=args.threads,
            seed=args.seed,
        ),
        cache=CacheConfig(num_blocks=args.num_kv_blocks),
        scheduler=SchedulerConfig(
            max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens
        ),
        step_log_path=str(args.step_log) if calibrating else None,
    )
    if args.profile:
        profile_path = args.profile
    else:
        start = time.perf_counter()
        grid = ProfileGrid(
            context_lens=(32, 256, 768), prefill_lens=(16, 64, 128, 256, 512), repeats=args.repeats
        )
        model = profile_engine(
            dataclasses.replace(config, step_log_path=None),
            grid,
            progress=print,
            clock=args.clock,
            idle_gap_s=args.idle_gap_s,
            fit_target=args.fit_target,
        )
        model.save(args.profile_out)
        profile_path = args.profile_out
        fit = model.metadata["fit"]
        print(
            f"profiled in {time.perf_counter() - start:.0f} s: {fit['num_samples']} steps, "
            f"fit mean |error| {fit['mean_abs_rel_error']:.1%}"
        )
    profile = ProfiledCostModel.load(profile_path)
    from corral.engine.llm_engine import LLMEngine

    # The in-process engine logs its steps only for --target engine (else the server does).
    engine = LLMEngine(
        config if args.target == "engine" else dataclasses.replace(config, step_log_path=None)
    )
    vocab_size = engine.arch.vocab_size
    results = {
        "args": {key: str(value) if isinstance(value, Path) else value
                 for key, value in vars(args).items()},
        "profile_fit": profile.metadata.get("fit"),
        "rates": {},
    }  # fmt: skip
    rates = [float(r) for r in args.rates.split(",")]
    workloads = {rate: workload_at(rate, args, vocab_size) for rate in rates}
    runs: dict[float, list[dict]] = {rate: [] for rate in rates}
    calibration_windows: list[tuple[float, float]] = []
    calibration_parts = []
    if calibrating:
        calibration, _ = workload_at(
            args.calibration_rate,
            args,
            vocab_size,
            args.calibration_offset,
            args.calibration_requests,
        )
        calibration_parts = split_workload(
            fresh_ids(calibration, 0xC0FFEE), args.real_repeats * len(rates)
        )

    def calibrate(run_one) -> None:
        """One slice of the calibration requests (the machine's speed drifts over minutes, so
        the calibration is spread over the same period as the real runs)."""
        if calibration_parts:
            part = calibration_parts.pop(0)
            start = time.monotonic()
            run = run_one(part)
            calibration_windows.append((start, time.monotonic()))
            print(
                f"calibration slice: {len(part)} requests (trace offset "
                f"{args.calibration_offset}, {args.calibration_rate} req/s) in "
                f"{run['duration_s']:.0f} s",
                flush=True,
            )

    def run_all(run_one) -> None:
        for repeat in range(args.real_repeats):
            for index, rate in enumerate(rates):
                calibrate(run_one)
                # Ids never repeat across runs: each run starts with nothing of it cached.
                start = time.monotonic()
                run = run_one(fresh_ids(workloads[rate][0], 1 + repeat * len(rates) + index))
                run["window"] = [start, time.monotonic()]
                runs[rate].append(run)
                error = run["step_error"]
                on_steps = (
                    ""
                    if error is None
                    else f"; profile on its {error['num_steps']} steps: mean error "
                    f"{error['mean_rel_error']:+.1%}, mean |error| "
                    f"{error['mean_abs_rel_error']:.1%}"
                )
                print(
                    f"rate {rate} repeat {repeat + 1} ({args.target}): real "
                    f"{run['duration_s']:.0f} s (load {run['load'][0]:.1f} -> "
                    f"{run['load'][1]:.1f}){on_steps}",
                    flush=True,
                )

    if args.target == "engine":
        warm_up(engine)
        run_all(lambda workload: replay_once(engine, workload, profile, args.clock))
        engine.core.flush()
    else:
        from benchmarks.serve_reference import ServerProcess

        del engine
        log = Path("/tmp/corral-fidelity-serve.log")
        with ServerProcess(server_args(config, args), log) as server:
            model_name = Path(model_dir).name
            warm = fresh_ids(workloads[rates[0]][0], 0)
            serve_once(server.url, model_name, dataclasses.replace(warm, specs=warm.specs[:2]))
            run_all(lambda workload: serve_once(server.url, model_name, workload))
    profiles = {"grid profile": profile_path}
    logged_requests: list[dict] = []
    if calibrating:
        from corral.engine.step_log import read_step_log
        from corral.sim.profile_log import profile_from_step_logs

        calibrated = profile_from_step_logs(
            [args.step_log], fit_target=args.fit_target, windows=calibration_windows
        )
        calibrated.save(args.calibrated_profile_out)
        fit = calibrated.metadata["fit"]
        print(
            f"calibrated profile: {fit['num_samples']} logged steps, fit mean |error| "
            f"{fit['mean_abs_rel_error']:.1%} -> {args.calibrated_profile_out}"
        )
        results["calibrated_profile_fit"] = fit
        profiles["serve-calibrated profile"] = args.calibrated_profile_out
        # A diagnostic, not a prediction: the cost model fitted to the compared runs' own steps
        # leaves only the simulator's own error (scheduling, timing of arrivals and outputs).
        compared = [tuple(run["window"]) for rate_runs in runs.values() for run in rate_runs]
        oracle = profile_from_step_logs(
            [args.step_log], fit_target=args.fit_target, windows=compared
        )
        oracle_path = str(Path(args.calibrated_profile_out).with_suffix(".oracle.json"))
        oracle.save(oracle_path)
        profiles["oracle profile (the compared runs' own steps)"] = oracle_path
        logged_requests = read_step_log(args.step_log)[2]
    for rate in rates:
        workload, scale = workloads[rate]
        reals = [run["summary"] for run in runs[rate]]
        entry = results["rates"][str(rate)] = {
            "time_scale": scale,
            "runs": [
                {key: value for key, value in run.items() if key != "summary"}
                | {"summary": run["summary"].to_dict()}
                | (
                    {"engine_side": engine_side_ttft(logged_requests, run["window"])}
                    if logged_requests
                    else {}
                )
                for run in runs[rate]
            ],
            "profiles": {},
        }
        for name, path in profiles.items():
            deployment = DeploymentOptions(
                cost_model="profiled",
                profile_path=path,
                scheduler=config.scheduler,
                num_blocks=args.num_kv_blocks,
                max_model_len=args.max_model_len,
            )
            sim_result = simulate_result(workload, deployment)
            sim = build_report(sim_result).summary
            rows = compare(reals, sim)
            entry["profiles"][name] = {
                "sim_wall_s": sim_result.wall_time_s,
                "metrics": rows,
                "sim_summary": sim.to_dict(),
            }
            print(
                f"\nrate {rate} req/s (azure-conv x{args.length_scale} lengths, trace gaps "
                f"x{scale:.2f}, {len(workload)} requests), {len(reals)} real runs vs one "
                f"simulation with the {name} ({sim_result.wall_time_s:.2f} s)"
            )
            print_table(rows)
        for run, logged in zip(runs[rate], entry["runs"]):
            side = logged.get("engine_side")
            if side and side["num_requests"]:
                print(
                    f"a run's mean TTFT: client {run['summary'].ttft.mean_ms:.1f} ms, engine "
                    f"(step log) {side['mean_ttft_ms']:.1f} ms, of which frontend arrival -> "
                    f"core {side['mean_arrival_to_add_ms']:.1f} ms"
                )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
