"""Prefill/decode disaggregation on this machine: 1 prefill + 1 decode engine against 2
colocated engines, each behind `corral router`, one core per engine, on a workload that mixes
long prompts and long outputs (the Azure LLM inference conversation trace, 2023, lengths scaled
to the CPU's context), at several request rates; the simulator's prediction beside each run.

1. Per configuration, two `corral serve` replicas start pinned to cores 0 and 1 (--cores), with
   --step-log; disaggregated: --kv-role prefill and --kv-role decode behind
   `corral router --prefill-backend --decode-backend`; colocated: plain replicas behind
   `corral router --policy least-outstanding`. Each replica is warmed up.
2. Per rate (--rates, requests/s, Poisson), the same workload (the same seed for both
   configurations) through the router with `corral bench` (token-id prompts, max_tokens forced
   with ignore_eos): TTFT and TPOT (p50, p99), goodput under --slo-ttft-ms / --slo-tpot-ms; for
   the disaggregated runs the decode replica's corral:kv_transfer_* counters: fetched blocks'
   bytes and seconds (transfer bandwidth, per-request transfer latency).
3. The simulator: a profile fitted to the replicas' step logs of both configurations, then the
   same workload through `corral simulate` with 2 instances (least-outstanding) or 1 prefill + 1
   decode instance (transfers priced at the measured bandwidth and latency), with the request
   path measured by the router benchmark's method (none here: engines' TTFT beside).
4. Prints the tables; writes --json-out (default docs/figures/disaggregation.json).

    .venv/bin/python -m benchmarks.disaggregation               # about 12 minutes
    .venv/bin/python -m benchmarks.disaggregation --quick --model DIR --json-out /tmp/d.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.disaggregation_sim import simulate_config  # noqa: E402
from benchmarks.router import warm_up  # noqa: E402
from benchmarks.router_procs import (  # noqa: E402
    Child,
    CpuMeter,
    machine,
    resolve_model,
    run_stopping_on_sigterm,
    scrape,
    start_replica,
    stop_all,
    wait_idle,
)
from benchmarks.router_sim import fit_profile  # noqa: E402
from corral.workloads import ArrivalOptions, Workload, WorkloadOptions, build_workload  # noqa: E402

CONFIGS = ("colocated", "disaggregated")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model directory (default: the demo)")
    parser.add_argument("--cores", default="0,1")
    parser.add_argument("--rates", default="1.5,3", help="requests/s, comma-separated")
    parser.add_argument("--num-requests", type=int, default=120)
    parser.add_argument("--length-scale", type=float, default=0.25, help="Azure lengths x this")
    parser.add_argument("--max-model-len", type=int, default=None, help="default: min(512, model)")
    parser.add_argument("--num-kv-blocks", type=int, default=1024)
    parser.add_argument("--max-num-seqs", type=int, default=32)
    parser.add_argument("--max-num-batched-tokens", type=int, default=512)
    parser.add_argument("--slo-ttft-ms", type=float, default=1000.0)
    parser.add_argument("--slo-tpot-ms", type=float, default=60.0)
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="tiny sizes")
    parser.add_argument(
        "--resimulate",
        type=Path,
        default=None,
        help="a previous run's JSON (its step logs in --work-dir): refit and simulate only",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rates, args.num_requests = "4", 8
    elif args.json_out is None:
        args.json_out = REPO / "docs" / "figures" / "disaggregation.json"
    return args


def build(args: argparse.Namespace, rate: float, vocab: int) -> Workload:
    """The rate's workload: the same for both configurations, its own prompts per rate (the
    replicas keep their prefix caches from one rate to the next)."""
    return build_workload(
        WorkloadOptions(
            dataset="azure-conv",
            num_requests=args.num_requests,
            seed=7 + int(rate * 1000),
            arrival=ArrivalOptions("poisson", rate=rate),
            vocab_size=vocab,
            length_scale=args.length_scale,
            max_model_len=args.max_model_len,
        )
    )


def start_router(config: str, urls: list[str], log: Path) -> Child:
    argv = ["router", "--policy", "least-outstanding"]
    if config == "disaggregated":
        argv += ["--prefill-backend", urls[0], "--decode-backend", urls[1]]
    else:
        argv += [arg for url in urls for arg in ("--backend", url)]
    return Child(argv, log)


# The decode replica's KV transfer counters (corral/serve/kv_transfer_metrics.py).
TRANSFER_SERIES = {
    "corral:kv_transfer_fetches_ok_total": "fetches_ok",
    "corral:kv_transfer_fetches_failed_total": "fetches_failed",
    "corral:kv_transfer_fetched_bytes_total": "bytes",
    "corral:kv_transfer_fetch_seconds_total": "seconds",
}


def run_rate(
    config: str, router_url: str, urls: list[str], workload: Workload, args: argparse.Namespace
) -> dict[str, Any]:
    from corral.bench.payload import RequestOptions
    from corral.bench.serve import ServeTarget, run_serve_benchmark
    from corral.core.slo_target import SLO

    slo = SLO(ttft_s=args.slo_ttft_ms / 1e3, tpot_s=args.slo_tpot_ms / 1e3)
    before = scrape(urls[1], TRANSFER_SERIES) if config == "disaggregated" else None
    meter = CpuMeter()
    start = time.monotonic()
    report, _ = run_serve_benchmark(
        workload,
        RequestOptions(prompt_format="ids"),
        ServeTarget(router_url, show_progress=False, request_timeout_s=600),
        slo,
    )
    end = time.monotonic()
    cpu = meter.stop()
    wait_idle(urls)
    s = report.summary
    result: dict[str, Any] = {
        "config": config,
        "num_requests": len(workload),
        "num_completed": s.num_completed,
        "num_failed": s.num_failed,
        "ttft_p50_ms": s.ttft.median_ms,
        "ttft_p99_ms": s.ttft.p99_ms,
        "ttft_mean_ms": s.ttft.mean_ms,
        "tpot_p50_ms": s.tpot.median_ms,
        "tpot_p99_ms": s.tpot.p99_ms,
        "goodput_rps": s.goodput,
        "slo_attainment": s.num_slo_met / s.num_completed if s.num_completed else None,
        "duration_s": end - start,
        "window": [start, end],
        "cpu": cpu,
    }
    if before is not None:
        after = scrape(urls[1], TRANSFER_SERIES)
        delta = {key: after[key] - before[key] for key in after}
        fetched = delta["fetches_ok"]
        result["transfer"] = delta | {
            "bandwidth_mb_s": delta["bytes"] / delta["seconds"] / 1e6 if delta["seconds"] else None,
            "latency_ms_per_request": 1e3 * delta["seconds"] / fetched if fetched else None,
            "bytes_per_request": delta["bytes"] / fetched if fetched else None,
        }
    return result


def run_config(
    config: str, args: argparse.Namespace, model_dir: str, vocab: int, work: Path
) -> tuple[list[dict], list[Path], dict[float, Workload]]:
    cores = [int(c) for c in args.cores.split(",")]
    engine_flags = [
        "--model", model_dir, "--max-model-len", str(args.max_model_len),
        "--num-kv-blocks", str(args.num_kv_blocks), "--max-num-seqs", str(args.max_num_seqs),
        "--max-num-batched-tokens", str(args.max_num_batched_tokens), "--seed", "0",
    ]  # fmt: skip
    roles = (["--kv-role", "prefill"], ["--kv-role", "decode"])
    step_logs = [work / f"{config}-replica{i}.steps.jsonl" for i in range(2)]
    runs, workloads = [], {}
    with ExitStack() as stack:
        replicas: list = []
        stack.callback(stop_all, replicas)  # those started, at the end
        for index, core in enumerate(cores[:2]):
            flags = engine_flags + (roles[index] if config == "disaggregated" else [])
            log = work / f"{config}-replica{index}.log"
            replica = start_replica(flags, core, step_logs[index], log)
            replicas.append(replica)
        for replica in replicas:
            replica.wait_healthy()
        urls = [r.url for r in replicas]
        for url in urls:
            warm_up(url, vocab)
        router = start_router(config, urls, work / f"{config}-router.log")
        stack.callback(router.stop)
        router.wait_healthy(120)
        for rate in (float(r) for r in args.rates.split(",")):
            workload = build(args, rate, vocab)
            workloads[rate] = workload
            run = run_rate(config, router.url, urls, workload, args) | {"rate": rate}
            print(
                f"{config:<14} {rate:>4} req/s: TTFT p50 {run['ttft_p50_ms']:.0f} p99 "
                f"{run['ttft_p99_ms']:.0f} ms, TPOT p50 {run['tpot_p50_ms']:.1f} p99 "
                f"{run['tpot_p99_ms']:.1f} ms, goodput {run['goodput_rps']:.2f} req/s, "
                f"{run['num_failed']} failed"
                + (
                    f", transfer {run['transfer']['bandwidth_mb_s'] or 0:.0f} MB/s, "
                    f"{run['transfer']['latency_ms_per_request'] or 0:.1f} ms/request"
                    if "transfer" in run
                    else ""
                ),
                flush=True,
            )
            runs.append(run)
    return runs, step_logs, workloads


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    return run_stopping_on_sigterm(lambda: run_benchmark(args))


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    model_dir, vocab = resolve_model(args)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="corral-disagg-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"machine_start": machine(), "settings": {
        k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
    }}  # fmt: skip
    runs, step_logs, workloads = [], [], {}
    if args.resimulate is not None:  # the measured runs of a previous invocation
        runs = json.loads(args.resimulate.read_text())["runs"]
        step_logs = [work / f"{c}-replica{i}.steps.jsonl" for c in CONFIGS for i in range(2)]
        workloads = {rate: build(args, rate, vocab) for rate in {run["rate"] for run in runs}}
    for config in CONFIGS if args.resimulate is None else ():
        config_runs, logs, workloads = run_config(config, args, model_dir, vocab, work)
        runs += config_runs
        step_logs += logs
    windows = [tuple(run["window"]) for run in runs]
    profile = fit_profile(step_logs, windows, work / "profile.json")
    for run in runs:
        run["sim"] = simulate_config(run, workloads[run["rate"]], profile["path"], args, runs)
    result.update(machine_end=machine(), runs=runs, profile=profile)
    print_table(runs)
    if args.json_out is not None:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(result, indent=1))
    return result


def print_table(runs: list[dict]) -> None:
    print(
        f"\n{'config':<14}{'rate':>5}{'TTFT p50':>9}{'p99':>7}{'TPOT p50':>9}{'p99':>7}"
        f"{'goodput':>8}{'sim TTFT p99':>13}{'sim TPOT p99':>13}{'sim goodput':>12}"
    )
    for r in runs:
        sim = r.get("sim") or {}
        print(
            f"{r['config']:<14}{r['rate']:>5}{r['ttft_p50_ms']:>9.0f}{r['ttft_p99_ms']:>7.0f}"
            f"{r['tpot_p50_ms']:>9.1f}{r['tpot_p99_ms']:>7.1f}{r['goodput_rps']:>8.2f}"
            f"{sim.get('ttft_p99_ms', float('nan')):>13.0f}"
            f"{sim.get('tpot_p99_ms', float('nan')):>13.1f}"
            f"{sim.get('goodput_rps', float('nan')):>12.2f}"
        )
    print(f"(load average now {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
