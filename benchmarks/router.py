"""Routing policies over real replicas: `corral router` in front of 2 `corral serve` replicas
(one core and one torch thread each), round robin vs least-outstanding vs prefix-aware, on a
multi-turn and a shared-prefix workload; the simulator's prediction of each run beside it; and
the router's overhead per request against a direct connection.

1. Two replicas start pinned to cores 0 and 1 (--cores), each with --step-log, on the demo
   model (--model). Each is warmed up with a few requests of its own.
2. For each round (--rounds), each workload and each policy (in the opposite order every other
   round), a fresh `corral router` starts in front of both replicas and `corral bench`
   (corral.bench.serve, the library call behind `corral bench serve`) drives the workload
   through it: text prompts to /v1/completions, streamed, max_tokens forced with ignore_eos.
   The replicas have no endpoint that empties their prefix cache, so every run gets its own
   workload seed: new conversations and new system prompts, nothing of them cached by an
   earlier run (earlier runs' blocks only take up evictable pool space). Measured: TTFT (mean,
   p50, p99) by the client; prefix hit rate = the replicas' prefix_cache_hits /
   prefix_cache_queries (tokens) over the run, from their /metrics. A run during which other
   jobs on the machine used more than --max-foreign-cores of CPU (router_procs.CpuMeter) is
   discarded and repeated with new prompts, up to --max-reruns times.
3. Router overhead: the same small completion (short prompt, max_tokens 1, not streamed), one
   at a time, --overhead-requests times, interleaved: directly to replica 0, through a
   round-robin router and through a prefix-aware router whose only backend is replica 0.
4. Simulator: for each run, a profile fitted to the replicas' step logs of the *other* runs
   (as `corral simulate profile --from-step-log`, restricted to those runs' time windows), then
   that run's exact workload through the simulator with 2 instances and the same policy (as
   `corral simulate run --num-instances 2 --router POLICY --profile ...`). Also, as a
   diagnostic, with a profile fitted to the run's own steps (what is left is the simulator's
   own error, not the cost model's).
5. Prints the tables and writes --json-out (default docs/figures/router.json).

    .venv/bin/python -m benchmarks.router                 # about 13 minutes on 2 quiet cores
    .venv/bin/python -m benchmarks.router --quick --model DIR --json-out /tmp/router.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from benchmarks.router_overhead import router_overhead  # noqa: E402
from benchmarks.router_procs import (  # noqa: E402
    CpuMeter,
    machine,
    resolve_model,
    routed_counts,
    run_stopping_on_sigterm,
    scrape,
    start_replica,
    start_router,
    stop_all,
    wait_idle,
    wait_router_ready,
)
from benchmarks.router_report import aggregate, fmt, print_tables, targets  # noqa: E402
from benchmarks.router_sim import simulate_runs  # noqa: E402
from corral.workloads import ArrivalOptions, Workload, WorkloadOptions, build_workload  # noqa: E402

POLICIES = ("round-robin", "least-outstanding", "prefix-aware")
WORKLOADS = ("multi-turn", "shared-prefix")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model directory (default: the demo)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--cores", default="0,1", help="one core per replica")
    parser.add_argument("--max-model-len", type=int, default=None, help="default: min(512, model)")
    parser.add_argument("--num-kv-blocks", type=int, default=4096)
    parser.add_argument("--max-num-seqs", type=int, default=32)
    parser.add_argument("--max-num-batched-tokens", type=int, default=512)
    group = parser.add_argument_group("multi-turn workload")
    group.add_argument("--mt-rate", type=float, default=2.0, help="new conversations/s")
    group.add_argument("--mt-conversations", type=int, default=90)
    group.add_argument("--mt-turns", type=int, default=4)
    group.add_argument("--mt-input-len", type=int, default=60, help="words per user message")
    group.add_argument("--mt-output-len", type=int, default=16)
    group.add_argument("--mt-think-time-s", type=float, default=1.0)
    group = parser.add_argument_group("shared-prefix workload")
    group.add_argument("--sp-rate", type=float, default=10.0, help="requests/s")
    group.add_argument("--sp-requests", type=int, default=450)
    group.add_argument("--sp-groups", type=int, default=16)
    group.add_argument("--sp-prefix-len", type=int, default=150, help="system prompt words")
    group.add_argument("--sp-input-len", type=int, default=20, help="question words")
    group.add_argument("--sp-output-len", type=int, default=16)
    parser.add_argument("--range-ratio", type=float, default=0.5, help="lengths +- this")
    parser.add_argument("--overhead-requests", type=int, default=200)
    parser.add_argument(
        "--max-foreign-cores",
        type=float,
        default=0.25,
        help="a run during which other jobs used more CPU than this (cores, averaged over the "
        "run) is discarded and run again with new prompts",
    )
    parser.add_argument("--max-reruns", type=int, default=2, help="per run, then kept as is")
    parser.add_argument("--work-dir", type=Path, default=None, help="logs, step logs, profiles")
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.overhead_requests, args.max_reruns = 1, 10, 0
        args.mt_conversations, args.mt_turns, args.mt_input_len = 3, 2, 8
        args.mt_output_len, args.mt_think_time_s, args.mt_rate = 4, 0.0, 4.0
        args.sp_requests, args.sp_groups, args.sp_prefix_len = 4, 2, 12
        args.sp_input_len, args.sp_output_len, args.sp_rate = 4, 4, 8.0
    elif args.json_out is None:
        args.json_out = REPO / "docs" / "figures" / "router.json"
    return args


def build(kind: str, seed: int, args: argparse.Namespace, model_dir: str, vocab: int) -> Workload:
    """The workload of one run. Prompts are cut to leave 64 tokens of room: a later turn's real
    prompt holds the previous reply as text, re-tokenized, which may come out a little longer."""
    common = dict(
        seed=seed,
        tokenizer=model_dir,
        vocab_size=vocab,
        max_model_len=args.max_model_len - 64,
        range_ratio=args.range_ratio,
    )
    if kind == "multi-turn":
        options = WorkloadOptions(
            dataset="multi-turn",
            num_requests=args.mt_conversations * args.mt_turns,
            num_turns=args.mt_turns,
            input_len=args.mt_input_len,
            output_len=args.mt_output_len,
            think_time_s=args.mt_think_time_s,
            arrival=ArrivalOptions("poisson", rate=args.mt_rate),
            **common,
        )
    else:
        options = WorkloadOptions(
            dataset="shared-prefix",
            num_requests=args.sp_requests,
            num_groups=args.sp_groups,
            prefix_len=args.sp_prefix_len,
            input_len=args.sp_input_len,
            output_len=args.sp_output_len,
            arrival=ArrivalOptions("poisson", rate=args.sp_rate),
            **common,
        )
    return build_workload(options)


def warm_up(url: str, vocab: int) -> None:
    """A few requests of random ids straight to a replica (first-use costs out of the runs)."""
    rng = random.Random(url)
    for length in (16, 64, 256, 32):
        ids = [rng.randrange(10, vocab) for _ in range(length)]
        body = {"prompt": ids, "max_tokens": 4, "ignore_eos": True, "model": None}
        body["model"] = httpx.get(url + "/v1/models", timeout=10).json()["data"][0]["id"]
        httpx.post(url + "/v1/completions", json=body, timeout=120).raise_for_status()


def run_once(
    router_url: str, replica_urls: list[str], workload: Workload
) -> tuple[dict[str, Any], list]:
    """The workload through the router, timed by corral bench; the replicas' prefix counters."""
    from corral.bench.payload import RequestOptions
    from corral.bench.serve import ServeTarget, run_serve_benchmark

    before = [scrape(url) for url in replica_urls]
    routed_before = routed_counts(router_url, len(replica_urls))
    load_before = os.getloadavg()[0]
    meter = CpuMeter()
    start = time.monotonic()
    report, _ = run_serve_benchmark(
        workload,
        RequestOptions(prompt_format="text"),
        ServeTarget(router_url, show_progress=False, request_timeout_s=300),
    )
    end = time.monotonic()
    cpu = meter.stop()
    wait_idle(replica_urls)
    after = [scrape(url) for url in replica_urls]
    routed = [
        b - a for a, b in zip(routed_before, routed_counts(router_url, len(replica_urls)))
    ]  # fmt: skip
    hits = [b["hits"] - a["hits"] for a, b in zip(before, after)]
    queries = [b["queries"] - a["queries"] for a, b in zip(before, after)]
    s = report.summary
    result = {
        "num_requests": len(workload),
        "num_completed": s.num_completed,
        "num_failed": s.num_failed,
        "errors": s.errors,
        "ttft_mean_ms": s.ttft.mean_ms,
        "ttft_p50_ms": s.ttft.median_ms,
        "ttft_p99_ms": s.ttft.p99_ms,
        "tpot_mean_ms": s.tpot.mean_ms,
        "e2e_mean_ms": s.e2e.mean_ms,
        "prefix_hit_rate": sum(hits) / sum(queries) if sum(queries) else None,
        "prefix_hit_rate_per_replica": [h / q if q else None for h, q in zip(hits, queries)],
        "prompt_tokens_queried": sum(queries),
        "routed": routed,
        "duration_s": end - start,
        "window": [start, end],
        "load_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "cpu": cpu,
    }
    return result, report.run.records


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    return run_stopping_on_sigterm(lambda: run_benchmark(args))


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    model_dir, vocab = resolve_model(args)
    policies = args.policies.split(",")
    workloads = args.workloads.split(",")
    cores = [int(c) for c in args.cores.split(",")]
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="corral-router-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    engine_flags = [
        "--model", model_dir, "--max-model-len", str(args.max_model_len),
        "--num-kv-blocks", str(args.num_kv_blocks), "--max-num-seqs", str(args.max_num_seqs),
        "--max-num-batched-tokens", str(args.max_num_batched_tokens), "--seed", "0",
    ]  # fmt: skip
    result: dict[str, Any] = {"machine_start": machine(), "settings": {
        k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
    }}  # fmt: skip
    step_logs = [work / f"replica{i}.steps.jsonl" for i in range(len(cores))]
    for log in step_logs:
        log.unlink(missing_ok=True)
    runs: list[dict] = []
    discarded: list[dict] = []
    num_attempts = 0
    workloads_of_run: dict[int, Workload] = {}
    overhead = None
    with ExitStack() as stack:
        replicas: list = []
        stack.callback(stop_all, replicas)  # those started, at the end
        for i, core in enumerate(cores):
            replica = start_replica(engine_flags, core, step_logs[i], work / f"replica{i}.log")
            replicas.append(replica)
        for replica in replicas:
            replica.wait_healthy()
        urls = [r.url for r in replicas]
        for url in urls:
            warm_up(url, vocab)
        print(f"replicas up on cores {cores}: {urls} (work dir {work})", flush=True)
        for round_index in range(args.rounds):
            order = policies if round_index % 2 == 0 else policies[::-1]
            for w_index, kind in enumerate(workloads):
                for policy in order:
                    for attempt in range(args.max_reruns + 1):
                        seed = 1 + num_attempts + 1000 * w_index
                        num_attempts += 1
                        workload = build(kind, seed, args, model_dir, vocab)
                        log = work / f"router-{num_attempts}.log"
                        router = start_router(urls, policy, model_dir, args.num_kv_blocks, log)
                        try:
                            wait_router_ready(router, len(urls))
                            run, _ = run_once(router.url, urls, workload)
                        finally:
                            router.stop()
                        run.update(workload=kind, policy=policy, round=round_index, seed=seed)
                        foreign = run["cpu"]["foreign_cores"]
                        run["contended"] = foreign > args.max_foreign_cores
                        print(
                            f"round {round_index + 1} {kind:<13} {policy:<18} TTFT mean "
                            f"{run['ttft_mean_ms']:.1f} ms p99 {run['ttft_p99_ms']:.1f} ms, hit "
                            f"rate {fmt(run['prefix_hit_rate'], '.1%')}, routed "
                            f"{run['routed']}, {run['num_failed']} failed, "
                            f"{run['duration_s']:.0f} s, load {run['load_1m'][0]} -> "
                            f"{run['load_1m'][1]}, other jobs {foreign:.2f} cores",
                            flush=True,
                        )
                        if not run["contended"] or attempt == args.max_reruns:
                            break
                        discarded.append(run)
                        print("  (discarded: other jobs competed for the cores; again)")
                    workloads_of_run[len(runs)] = workload
                    runs.append(run)
        if args.overhead_requests > 0:
            overhead = router_overhead(stack, urls[0], model_dir, args, work, step_logs[0])
    request_paths = overhead.get("request_path_s", {}) if overhead else {}
    simulate_runs(runs, workloads_of_run, step_logs, args, len(cores), work, request_paths)
    rows = aggregate(runs, policies, workloads)
    result.update(
        machine_end=machine(),
        runs=runs,
        discarded_runs=discarded,
        rows=rows,
        overhead=overhead,
        targets=targets(rows),
    )
    print_tables(rows, overhead)
    for name, target in result["targets"].items():
        verdict = "met" if target["met"] else "MISSED"
        value = target.get("value", target.get("worst_abs"))
        print(f"target {name}: {value:.3f} (target {target['target']}): {verdict}")
    if args.json_out is not None:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
