"""The simulator's prediction of a router benchmark run (benchmarks/router.py): a profile fitted
to the replicas' step logs (corral.sim.profile_log, as `corral simulate profile
--from-step-log`), then the run's own workload through `corral simulate` with 2 instances, the
same routing policy and the request path measured by the overhead phase (the library call
behind `corral simulate run --num-instances 2 --router POLICY --profile PROFILE
--request-path-ms MS`), as benchmarks/sim_fidelity.py compares them."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from corral.config import SchedulerConfig
from corral.sim.api import simulate_result
from corral.sim.deployment import DeploymentOptions
from corral.sim.profile_log import profile_from_step_logs
from corral.sim.report import build_report
from corral.workloads import Workload


def fit_profile(
    step_logs: list[Path], windows: list[tuple[float, float]], out: Path
) -> dict[str, Any]:
    """Fit to the logged steps that started inside windows (monotonic seconds); saves to out."""
    model = profile_from_step_logs(step_logs, fit_target="mean", windows=windows)
    model.save(out)
    fit = model.metadata["fit"]
    return {
        "path": str(out),
        "num_steps": fit["num_samples"],
        "fit_mean_abs_rel_error": fit["mean_abs_rel_error"],
    }


def simulate_run(
    workload: Workload,
    policy: str,
    profile_path: str,
    *,
    num_instances: int,
    max_num_seqs: int,
    max_num_batched_tokens: int,
    num_blocks: int,
    max_model_len: int,
    request_path_s: float = 0.0,
) -> dict[str, Any]:
    """The workload on num_instances simulated replicas behind policy: TTFT and prefix hits."""
    deployment = DeploymentOptions(
        cost_model="profiled",
        profile_path=profile_path,
        num_instances=num_instances,
        router=policy,
        scheduler=SchedulerConfig(
            max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens
        ),
        block_size=16,
        num_blocks=num_blocks,
        max_model_len=max_model_len,
        request_path_s=request_path_s,
    )
    result = simulate_result(workload, deployment)
    summary = build_report(result).summary
    hits = sum(i.kv.stats.prefix_hit_tokens - i.kv.num_external_tokens for i in result.instances)
    queries = sum(i.kv.stats.prefix_query_tokens for i in result.instances)
    return {
        "ttft_mean_ms": summary.ttft.mean_ms,
        "ttft_p50_ms": summary.ttft.median_ms,
        "ttft_p99_ms": summary.ttft.p99_ms,
        "prefix_hit_rate": hits / queries if queries else None,
        "routed": [i.num_assigned for i in result.instances],
        "num_completed": summary.num_completed,
        "sim_wall_s": result.wall_time_s,
        "request_path_ms": 1e3 * request_path_s,
    }


def engine_side(step_logs: list[Path], window: tuple[float, float]) -> dict[str, Any]:
    """From the replicas' step logs, for one run: each replica's busy fraction (its steps' time
    over the run's duration) and the mean TTFT the engines saw (frontend arrival to the first
    token's step end: the client's TTFT less the HTTP path and the router)."""
    from corral.engine.step_log import read_step_log

    start, end = window
    busy, ttfts = [], []
    for path in step_logs:
        _, steps, requests = read_step_log(path)
        busy.append(sum(s["s"] for s in steps if start <= s["t"] <= end) / (end - start))
        ttfts += [
            r["first"] - r["arrival"]
            for r in requests
            if start <= r["arrival"] <= end and r.get("first") is not None
        ]
    return {
        "replica_busy": busy,
        "engine_ttft_mean_ms": 1e3 * sum(ttfts) / len(ttfts) if ttfts else None,
    }


def simulate_runs(
    runs: list[dict],
    workloads_of_run: dict[int, Workload],
    step_logs: list[Path],
    args: argparse.Namespace,
    num_replicas: int,
    work: Path,
    request_path_s: dict[str, float],
) -> None:
    """Per run: the engines' side from the step logs, and the simulator's prediction with a
    profile fitted to the other runs' steps and the measured request path of the run's policy
    (sim); diagnostics: the same without the request path (sim_no_path, the engines alone) and
    with a profile fitted to the run's own steps (sim_own_steps, with the request path)."""
    sim_settings = dict(
        num_instances=num_replicas,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        num_blocks=args.num_kv_blocks,
        max_model_len=args.max_model_len,
    )
    run_windows = [tuple(run["window"]) for run in runs]
    for index, run in enumerate(runs):
        run.update(engine_side(step_logs, run_windows[index]))
        others = [w for j, w in enumerate(run_windows) if j != index]
        path_s = request_path_s.get(run["policy"], 0.0)
        cases = (
            ("sim", others, path_s),
            ("sim_no_path", others, 0.0),
            ("sim_own_steps", [run_windows[index]], path_s),
        )
        profiles: dict[tuple, dict[str, Any]] = {}
        for which, windows, path in cases:
            if not windows:
                continue
            key = tuple(windows)
            if key not in profiles:
                out = work / f"profile-{len(profiles)}-{index}.json"
                profiles[key] = fit_profile(step_logs, windows, out)
            profile = profiles[key]
            run[which] = simulate_run(
                workloads_of_run[index], run["policy"], profile["path"],
                request_path_s=path, **sim_settings,
            ) | {"profile": profile}  # fmt: skip
